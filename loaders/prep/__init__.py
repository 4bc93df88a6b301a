"""Making a prepared dataset folder: `build` drives it; `mvcnn_tree` ingests MVCNN render trees, `meshes`
reads mesh files, `render` draws the 12 MVCNN views, `synthetic` makes the built-in procedural set, `pairs` turns a
CSV of two images per object into a two-view folder."""
