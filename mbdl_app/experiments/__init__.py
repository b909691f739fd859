"""Experiments that reproduce published tables: every method measured on the same data,
the same machine and in the same run, printed next to the published figures
(`mbdl reproduce ...`). One module per paper or benchmark."""
