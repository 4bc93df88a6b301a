"""Data in and out, below everything else (imports nothing from `mmtm` or `cli`).

- `dataset`: the prepared-dataset contract, read by the loaders and written by `prep`;
  `errors`: the project's base error type; `atomic`: crash-safe writes; `output`: output-path checks;
  `device`: device choice.
- `prep/`: making a dataset folder (MVCNN render trees, meshes, the renderer, the synthetic set, a CSV of image
  pairs).
- loading: `two_view` (the loader interface), `factory` (`two_view_loader`), `dali_backend`,
  `torch_backend`, `sampling` (order, flips, shards), `files` (reading view files).
"""
