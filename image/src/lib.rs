//! hk-image: OCI images as ext4 root filesystems.
