"""Sending versions to S3: the worker pool, the data paths, the client; the only package
that imports boto3 or obstore."""
