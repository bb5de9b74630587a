//! Decoding the exception syndrome (ESR_EL2) of a trap from an aarch64 guest, and the data
//! moved by an emulated load or store. Pure functions: a backend reads the syndrome and the
//! registers, these say what the guest did and what goes back into its registers.
//!
//! Everything here comes from the guest: an access the hypervisor cannot describe (no valid
//! instruction syndrome, a size or register outside the architecture) is refused as
//! [`Trap::Unsupported`], never guessed at and never a panic.

/// Exception classes (ESR_EL2.EC) hk handles.
const EC_WFX: u64 = 0x01;
const EC_HVC64: u64 = 0x16;
const EC_SMC64: u64 = 0x17;
const EC_SYSREG: u64 = 0x18;
const EC_DATA_ABORT_LOWER: u64 = 0x24;

/// Why the guest trapped, as far as the VMM cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trap {
    /// A load or store to an address with no memory: emulated MMIO.
    DataAbort(Access),
    /// HVC with its immediate: PSCI (and SMCCC) calls come this way when the device tree
    /// says `method = "hvc"`. The return address is already past the instruction.
    Hvc(u16),
    /// SMC with its immediate: PSCI from guests that use the SMC conduit. The return
    /// address is the SMC itself, so the backend steps over it.
    Smc(u16),
    /// WFI (`wfe: false`) or WFE: the vCPU idles until an interrupt or event.
    Wait { wfe: bool },
    /// An MRS/MSR or system instruction the hypervisor traps (debug and implementation
    /// registers): reads give 0, writes are ignored.
    SysReg { read: bool, reg: u8 },
    /// Anything else, with the exception class: the VM cannot go on.
    Unsupported(u64),
}

/// One MMIO access as the instruction syndrome describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub write: bool,
    /// 1, 2, 4 or 8 bytes.
    pub size: usize,
    /// The general register moved (0-30), or 31 for the zero register (XZR/WZR): for a data
    /// abort register 31 is never SP.
    pub reg: u8,
    /// A load that sign-extends (LDRSB, LDRSH, LDRSW).
    pub sign_extend: bool,
    /// The register is 64-bit (Xn); a 32-bit (Wn) load clears the upper half.
    pub sixty_four: bool,
}

/// The zero register's number in a data abort's SRT.
pub const ZERO_REGISTER: u8 = 31;

/// Decodes ESR_EL2.
pub fn decode(esr: u64) -> Trap {
    let ec = (esr >> 26) & 0x3f;
    let iss = esr & 0x1ff_ffff;
    match ec {
        EC_DATA_ABORT_LOWER => {
            // ISV: without a valid syndrome (a load pair, a write-back addressing mode, a
            // SIMD register) the access cannot be emulated without decoding the instruction.
            if iss & (1 << 24) == 0 {
                return Trap::Unsupported(ec);
            }
            Trap::DataAbort(Access {
                write: iss & (1 << 6) != 0,
                size: 1 << ((iss >> 22) & 0x3),
                reg: ((iss >> 16) & 0x1f) as u8,
                sign_extend: iss & (1 << 21) != 0,
                sixty_four: iss & (1 << 15) != 0,
            })
        }
        EC_HVC64 => Trap::Hvc((iss & 0xffff) as u16),
        EC_SMC64 => Trap::Smc((iss & 0xffff) as u16),
        EC_WFX => Trap::Wait { wfe: iss & 1 != 0 },
        EC_SYSREG => Trap::SysReg {
            read: iss & 1 != 0,
            reg: ((iss >> 5) & 0x1f) as u8,
        },
        _ => Trap::Unsupported(ec),
    }
}

impl Access {
    /// The bytes a store puts on the bus, from the value of its source register (0 for the
    /// zero register), little-endian as the guest's bus is.
    pub fn store_bytes(&self, reg_value: u64) -> [u8; 8] {
        let value = if self.reg == ZERO_REGISTER {
            0
        } else {
            reg_value
        };
        value.to_le_bytes()
    }

    /// The value a load leaves in its destination register, from the `size` bytes read off
    /// the bus: sign- or zero-extended to the register's width, and a 32-bit register's
    /// upper half cleared. `None` for the zero register, which a load leaves alone.
    pub fn load_value(&self, data: &[u8]) -> Option<u64> {
        if self.reg == ZERO_REGISTER {
            return None;
        }
        let mut bytes = [0u8; 8];
        let n = self.size.min(8).min(data.len());
        bytes[..n].copy_from_slice(&data[..n]);
        let raw = u64::from_le_bytes(bytes);
        let bits = (self.size * 8) as u32;
        let value = if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            (((raw << shift) as i64) >> shift) as u64
        } else {
            raw
        };
        Some(if self.sixty_four {
            value
        } else {
            value & 0xffff_ffff
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ESR_EL2 of a data abort from a lower EL with a valid syndrome (IL set, as for every
    /// 32-bit instruction).
    fn abort(sas: u64, sse: bool, srt: u64, sf: bool, wnr: bool) -> u64 {
        (EC_DATA_ABORT_LOWER << 26)
            | (1 << 25)
            | (1 << 24)
            | (sas << 22)
            | (u64::from(sse) << 21)
            | (srt << 16)
            | (u64::from(sf) << 15)
            | (u64::from(wnr) << 6)
    }

    #[test]
    fn every_access_size_register_and_direction_decodes() {
        for sas in 0..4u64 {
            for srt in 0..32u64 {
                for wnr in [false, true] {
                    for sf in [false, true] {
                        let t = decode(abort(sas, false, srt, sf, wnr));
                        assert_eq!(
                            t,
                            Trap::DataAbort(Access {
                                write: wnr,
                                size: 1 << sas,
                                reg: srt as u8,
                                sign_extend: false,
                                sixty_four: sf,
                            }),
                            "sas {sas} srt {srt} wnr {wnr} sf {sf}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn an_abort_without_a_valid_syndrome_is_refused() {
        let esr = abort(2, false, 3, false, true) & !(1 << 24);
        assert_eq!(decode(esr), Trap::Unsupported(EC_DATA_ABORT_LOWER));
    }

    fn load(size: usize, sign_extend: bool, sixty_four: bool) -> Access {
        Access {
            write: false,
            size,
            reg: 5,
            sign_extend,
            sixty_four,
        }
    }

    #[test]
    fn loads_zero_extend_by_default() {
        let data = [0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87];
        assert_eq!(load(1, false, true).load_value(&data), Some(0x80));
        assert_eq!(load(2, false, true).load_value(&data), Some(0x8180));
        assert_eq!(load(4, false, true).load_value(&data), Some(0x8382_8180));
        assert_eq!(
            load(8, false, true).load_value(&data),
            Some(0x8786_8584_8382_8180)
        );
        assert_eq!(load(4, false, false).load_value(&data), Some(0x8382_8180));
    }

    #[test]
    fn sign_extending_loads_fill_the_register_they_name() {
        // LDRSB/LDRSH/LDRSW into Xn: to 64 bits.
        assert_eq!(
            load(1, true, true).load_value(&[0x80]),
            Some(0xffff_ffff_ffff_ff80)
        );
        assert_eq!(
            load(2, true, true).load_value(&[0x00, 0x80]),
            Some(0xffff_ffff_ffff_8000)
        );
        assert_eq!(
            load(4, true, true).load_value(&[0, 0, 0, 0x80]),
            Some(0xffff_ffff_8000_0000)
        );
        // Into Wn: to 32 bits, the upper half cleared.
        assert_eq!(load(1, true, false).load_value(&[0x80]), Some(0xffff_ff80));
        assert_eq!(
            load(2, true, false).load_value(&[0xfe, 0xff]),
            Some(0xffff_fffe)
        );
        // A positive value is the same either way.
        assert_eq!(load(1, true, true).load_value(&[0x7f]), Some(0x7f));
        assert_eq!(load(2, true, false).load_value(&[0xff, 0x7f]), Some(0x7fff));
        // A 64-bit load has nothing to extend.
        assert_eq!(load(8, true, true).load_value(&[0xff; 8]), Some(u64::MAX));
    }

    #[test]
    fn the_syndrome_carries_sign_extension_and_register_width() {
        let t = decode(abort(0, true, 7, false, false));
        let Trap::DataAbort(a) = t else {
            panic!("{t:?}")
        };
        assert!(a.sign_extend && !a.sixty_four && !a.write && a.reg == 7 && a.size == 1);
        assert_eq!(a.load_value(&[0xff]), Some(0xffff_ffff));
    }

    #[test]
    fn the_zero_register_stores_zero_and_takes_no_load() {
        let store = Access {
            write: true,
            size: 4,
            reg: ZERO_REGISTER,
            sign_extend: false,
            sixty_four: false,
        };
        assert_eq!(store.store_bytes(0xdead_beef), [0; 8]);
        assert_eq!(
            Access {
                write: false,
                ..store
            }
            .load_value(&[1, 2, 3, 4]),
            None
        );
    }

    #[test]
    fn stores_put_the_registers_low_bytes_on_the_bus() {
        let store = Access {
            write: true,
            size: 2,
            reg: 0,
            sign_extend: false,
            sixty_four: true,
        };
        let bytes = store.store_bytes(0x1122_3344_5566_7788);
        assert_eq!(&bytes[..store.size], &[0x88, 0x77]);
    }

    #[test]
    fn a_short_read_buffer_never_panics() {
        assert_eq!(load(8, true, true).load_value(&[0x80]), Some(0x80));
        assert_eq!(load(4, false, true).load_value(&[]), Some(0));
    }

    #[test]
    fn calls_waits_and_register_traps_decode() {
        assert_eq!(decode((EC_HVC64 << 26) | (1 << 25)), Trap::Hvc(0));
        assert_eq!(decode((EC_HVC64 << 26) | 0x1234), Trap::Hvc(0x1234));
        assert_eq!(decode((EC_SMC64 << 26) | 7), Trap::Smc(7));
        assert_eq!(decode(EC_WFX << 26), Trap::Wait { wfe: false });
        assert_eq!(decode((EC_WFX << 26) | 1), Trap::Wait { wfe: true });
        // MRS x3, <reg>: direction bit set, Rt in [9:5].
        assert_eq!(
            decode((EC_SYSREG << 26) | (3 << 5) | 1),
            Trap::SysReg { read: true, reg: 3 }
        );
        assert_eq!(
            decode((EC_SYSREG << 26) | (30 << 5)),
            Trap::SysReg {
                read: false,
                reg: 30
            }
        );
        // An instruction abort (0x20) or an unknown class is no MMIO.
        assert_eq!(decode(0x20 << 26), Trap::Unsupported(0x20));
        assert_eq!(decode(0), Trap::Unsupported(0));
    }
}
