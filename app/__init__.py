"""The application shell: commands and servers around the pipeline's stages."""
