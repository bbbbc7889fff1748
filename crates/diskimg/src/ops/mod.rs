//! Whole-image operations, written only against [`crate::BlockDevice`].
//!
//! - [`status`]: the status of a guest range through a whole chain, as
//!   QEMU's block layer computes it;
//! - [`map`]: the extents `qemu-img map` prints;
//! - [`compare`]: `qemu-img compare`;
//! - [`convert`]: copying an image into a sparse raw file.

pub mod compare;
pub mod convert;
pub mod map;
pub mod status;
