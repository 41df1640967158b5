//! Integration tests, one binary: see `integration/` for what each file proves.
mod integration;
