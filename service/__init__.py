"""discoseg service: the FastAPI inference and annotation-assist API and batch jobs."""
