"""Code shared by the jobs and the Serve app: config, storage, schemas, catalog, prompts."""
