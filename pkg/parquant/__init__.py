"""parquant: compress large language models whose weights live in Parquet, locally or on S3."""

__version__ = "0.1.0"
