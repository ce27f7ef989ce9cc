# Fallback Routing gateway image: slim, non-root, dependencies from uv.lock.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/app/.venv UV_COMPILE_BYTECODE=1
WORKDIR /app
RUN pip install --no-cache-dir uv==0.13.9 \
    && useradd --create-home --uid 10001 gateway
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY main.py ./
COPY services ./services
COPY config ./config
# our own modules too (the dependencies are compiled by UV_COMPILE_BYTECODE): no compile per start
RUN python -m compileall -q services
RUN mkdir -p /app/.logs /app/.data && chown -R gateway /app/.logs /app/.data
USER gateway
ENV PATH=/app/.venv/bin:$PATH FR_API_HOST=0.0.0.0
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=2)" || exit 1
CMD ["python", "main.py", "api"]
