//! Whole-image operations, written only against [`crate::BlockDevice`].
