"""Faceset I/O (DFLJPG, packs), landmarks and face types, colour transfer, the SAEHD sample pipeline and loader."""
