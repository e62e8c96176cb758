"""Experiments: runs as one config (``ppvae train``'s run folders, ``load_run``), comparison
tables, gradient diagnostics, output folders and pictures.

The top library layer: imports from every layer below it and from the catalogue
(``ppvae.models``, ``ppvae.guides``); only ``cli`` imports from here.
"""
