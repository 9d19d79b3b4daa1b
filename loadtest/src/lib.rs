//! PLACEHOLDER — being written (issue 3).
pub mod cli;
