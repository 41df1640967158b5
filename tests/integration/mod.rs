pub mod cli;
pub mod common;
pub mod pipeline;
pub mod runtime;
