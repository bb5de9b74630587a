//! hk-vmm: see the crate docs once the VMM lands.
