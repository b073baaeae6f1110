"""`pbt-job report`: pictures and tables of a PBT run (lineage, hyperparameter schedules, learning curves).

`pbt_job.report.write.write_report` is the entry point; `ancestry` needs neither Ray nor files.
"""
