//! Parity cases: see the family's ops. (Being written.)

use super::*;

pub const CASES: &[Case] = &[];
