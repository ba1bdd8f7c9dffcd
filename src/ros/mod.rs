//! r2r glue: the only module that imports r2r.
