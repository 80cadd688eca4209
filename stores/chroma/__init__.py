"""The Chroma driver, embedded or on a Chroma server, atomic through the generation scheme (see ``store``)."""
