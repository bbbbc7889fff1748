//! Whole-image operations, written only against [`crate::BlockDevice`].
//!
//! - [`status`]: the status of a guest range through a whole chain, as
//!   QEMU's block layer computes it;
//! - [`map`]: the extents `qemu-img map` prints;
//! - [`compare`]: `qemu-img compare`;
//! - [`convert`]: copying an image into a sparse raw file;
//! - [`concat`]: several images read as one (convert's several sources);
//! - [`measure`]: `qemu-img measure`.

pub mod compare;
pub mod concat;
pub mod convert;
pub mod map;
pub mod measure;
pub mod status;
