FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY driftline ./driftline
COPY streams ./streams
COPY models ./models
COPY api ./api
# One import name, driftline (models/, streams/ and api/ install under it); the sources are not
# left in the working directory, where `python -m driftline` would find a partial package.
RUN pip install . && rm -rf /src && useradd --create-home --uid 10001 driftline
USER driftline
WORKDIR /home/driftline
ENTRYPOINT ["driftline"]
CMD ["--help"]
