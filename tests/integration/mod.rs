pub mod cli;
pub mod common;
pub mod operations;
pub mod pipeline;
pub mod runtime;
pub mod serve;
pub mod signing;
