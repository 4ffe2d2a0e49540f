//! Fixtures shared by the integration tests: git servers, an HTTP(S) file
//! server, archive builders, pack file sets and registry index documents.

// Not every test module uses every helper; unused ones are not dead code.
#![allow(dead_code)]

pub mod archives;
pub mod git;
pub mod http;
pub mod index;
pub mod memory;
pub mod packs;
