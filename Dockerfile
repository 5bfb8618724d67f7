FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY persistence ./persistence
COPY loadtests ./loadtests
RUN pip install --no-cache-dir .
EXPOSE 8000
CMD ["metering", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
