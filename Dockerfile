# syntax=docker/dockerfile:1
# The pbt-job image: the head and every worker of the RayJob run it (helm/pbt-job).
#   docker build -t pbt-job:0.1.0 .                                   # CUDA, for GPU pools
#   docker build --build-arg RAY_VARIANT=cpu -t pbt-job:0.1.0-cpu .   # CPU only (kind, CI)
# The base image's Ray and Python versions are pyproject.toml's pins (tests/test_deploy.py).
ARG RAY_VARIANT=gpu
FROM rayproject/ray:2.60.0-py311-${RAY_VARIANT}
ARG RAY_VARIANT

# The `ray` user of the base image (uid 1000, gid 100) owns its Python environment, so
# pip installs without root and the container never needs it.
USER 1000:100
WORKDIR /home/ray

COPY --chown=1000:100 pyproject.toml requirements.lock README.md /tmp/pbt-job/
COPY --chown=1000:100 pbt_job /tmp/pbt-job/pbt_job
COPY --chown=1000:100 configs /home/ray/configs

# torch first and alone: a base image that already has the pinned torch (with CUDA)
# keeps it; otherwise the GPU variant takes PyPI's CUDA build and the CPU variant the
# much smaller CPU build. Then pbt-job with every dependency pinned by requirements.lock.
RUN TORCH="torch==$(sed -n 's/^torch==//p' /tmp/pbt-job/requirements.lock)" \
    && if [ "$RAY_VARIANT" = cpu ]; then \
         pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "$TORCH"; \
       else \
         pip install --no-cache-dir "$TORCH"; \
       fi \
    && pip install --no-cache-dir -c /tmp/pbt-job/requirements.lock /tmp/pbt-job \
    && rm -rf /tmp/pbt-job \
    && pbt-job validate --config /home/ray/configs/quick.yaml

ENV PYTHONUNBUFFERED=1
# KubeRay replaces the command with its own `ray start ... --block` for the head and the
# workers, so there is no ENTRYPOINT to wrap it; `docker run IMAGE pbt-job ...` works too.
ENTRYPOINT []
CMD ["pbt-job", "--help"]
