//! The device tree hk hands an arm64 kernel: it is the whole description of the machine
//! (no firmware, no ACPI). QEMU virt's node names and addresses, so the same blob boots on
//! QEMU (`-dtb`) for the cross-check in runner/tests/arm64_boot.rs.

use super::layout::*;
use crate::aarch64::psci_mpidr;
use vm_fdt::{Error as FdtError, FdtWriter};

/// GIC interrupt specifiers: SPI or PPI, and the trigger.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
const IRQ_TYPE_EDGE_RISING: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;

const GIC_PHANDLE: u32 = 1;
const CLOCK_PHANDLE: u32 = 2;

/// The architected timer's PPIs: secure and non-secure physical, virtual, hypervisor.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// What the tree describes.
pub struct Machine<'a> {
    pub cpus: u32,
    /// RAM: base and size.
    pub memory: (u64, u64),
    pub cmdline: &'a str,
    /// The initrd's first byte and the byte after its last.
    pub initrd: Option<(u64, u64)>,
    /// virtio-mmio windows in device order: base and SPI.
    pub virtio: &'a [(u64, u32)],
}

fn cells(values: &[u64]) -> Vec<u32> {
    values
        .iter()
        .flat_map(|v| [(v >> 32) as u32, *v as u32])
        .collect()
}

/// Writes the flattened device tree.
pub fn create(m: &Machine<'_>) -> Result<Vec<u8>, FdtError> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 1)?;
    fdt.property_u32("#size-cells", 0)?;
    for i in 0..m.cpus {
        let mpidr = psci_mpidr(i) as u32;
        let cpu = fdt.begin_node(&format!("cpu@{mpidr:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_u32("reg", mpidr)?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;

    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".into(), "arm,psci-0.2".into()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;

    let (ram, ram_size) = m.memory;
    let memory = fdt.begin_node(&format!("memory@{ram:x}"))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u32("reg", &cells(&[ram, ram_size]))?;
    fdt.end_node(memory)?;

    let gic = fdt.begin_node(&format!("intc@{GIC_DIST:x}"))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_array_u32(
        "reg",
        &cells(&[
            GIC_DIST,
            GIC_DIST_SIZE,
            GIC_REDIST,
            GIC_REDIST_SIZE * u64::from(m.cpus),
        ]),
    )?;
    fdt.property_phandle(GIC_PHANDLE)?;
    fdt.end_node(gic)?;

    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    let irqs: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|&ppi| [GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH])
        .collect();
    fdt.property_array_u32("interrupts", &irqs)?;
    fdt.end_node(timer)?;

    // The PL011's clocks, as QEMU describes them: the driver wants an apb_pclk.
    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", 24_000_000)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_phandle(CLOCK_PHANDLE)?;
    fdt.end_node(clock)?;

    let uart_name = format!("pl011@{UART:x}");
    let uart = fdt.begin_node(&uart_name)?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl011".into(), "arm,primecell".into()],
    )?;
    fdt.property_array_u32("reg", &cells(&[UART, UART_SIZE]))?;
    fdt.property_array_u32("interrupts", &[GIC_SPI, UART_SPI, IRQ_TYPE_EDGE_RISING])?;
    fdt.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
    fdt.end_node(uart)?;

    // hk's interrupt lines deliver one interrupt per trigger: edge-triggered, as QEMU
    // describes its virtio-mmio transports too.
    for &(base, spi) in m.virtio {
        let node = fdt.begin_node(&format!("virtio_mmio@{base:x}"))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.property_array_u32("reg", &cells(&[base, VIRTIO_MMIO_SIZE]))?;
        fdt.property_array_u32("interrupts", &[GIC_SPI, spi, IRQ_TYPE_EDGE_RISING])?;
        fdt.property_null("dma-coherent")?;
        fdt.end_node(node)?;
    }

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", m.cmdline)?;
    fdt.property_string("stdout-path", &format!("/{uart_name}"))?;
    if let Some((start, end)) = m.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", end)?;
    }
    fdt.end_node(chosen)?;

    fdt.end_node(root)?;
    fdt.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// The tree as `dtc` decompiles it: proof that it parses, and text to check node by
    /// node.
    fn decompile(blob: &[u8]) -> String {
        let mut dtc = Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dtc is missing: apt-get install device-tree-compiler (scripts/setup)");
        dtc.stdin.take().unwrap().write_all(blob).unwrap();
        let out = dtc.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "dtc refused the tree: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The body of node `path` (its properties, up to its first child or its end).
    fn node<'a>(dts: &'a str, name: &str) -> &'a str {
        let open = format!("{name} {{");
        let start = dts
            .find(&open)
            .unwrap_or_else(|| panic!("no node {name} in\n{dts}"));
        let body = &dts[start + open.len()..];
        let end = body.find("};").unwrap();
        &body[..end]
    }

    fn machine<'a>(virtio: &'a [(u64, u32)], initrd: Option<(u64, u64)>) -> Machine<'a> {
        Machine {
            cpus: 3,
            memory: (RAM_BASE, 0x1_8000_0000),
            cmdline: "reboot=c,panic_w panic=-1 quiet -- init arg",
            initrd,
            virtio,
        }
    }

    #[test]
    fn the_tree_describes_the_machine_node_by_node() {
        let virtio = [virtio_slot(0).unwrap(), virtio_slot(1).unwrap()];
        let blob = create(&machine(&virtio, Some((0x4800_0000, 0x4812_3456)))).unwrap();
        let dts = decompile(&blob);

        let root = node(&dts, "/");
        assert!(
            root.contains("compatible = \"linux,dummy-virt\";"),
            "{root}"
        );
        assert!(root.contains("#address-cells = <0x02>;"));
        assert!(root.contains("#size-cells = <0x02>;"));
        assert!(root.contains("interrupt-parent = <0x01>;"));

        for (name, reg) in [("cpu@0", "0x00"), ("cpu@1", "0x01"), ("cpu@2", "0x02")] {
            let cpu = node(&dts, name);
            assert!(cpu.contains("device_type = \"cpu\";"), "{cpu}");
            assert!(cpu.contains("compatible = \"arm,arm-v8\";"));
            assert!(cpu.contains("enable-method = \"psci\";"));
            assert!(cpu.contains(&format!("reg = <{reg}>;")), "{cpu}");
        }
        assert!(!dts.contains("cpu@3"));

        let psci = node(&dts, "psci");
        assert!(
            psci.contains("compatible = \"arm,psci-1.0\\0arm,psci-0.2\";"),
            "{psci}"
        );
        assert!(psci.contains("method = \"hvc\";"));

        let memory = node(&dts, "memory@40000000");
        assert!(memory.contains("device_type = \"memory\";"));
        assert!(
            memory.contains("reg = <0x00 0x40000000 0x01 0x80000000>;"),
            "{memory}"
        );

        let gic = node(&dts, "intc@8000000");
        assert!(gic.contains("compatible = \"arm,gic-v3\";"));
        assert!(gic.contains("interrupt-controller;"));
        assert!(gic.contains("#interrupt-cells = <0x03>;"));
        // Distributor, then one 128 KiB redistributor per CPU.
        assert!(
            gic.contains("reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x60000>;"),
            "{gic}"
        );
        assert!(gic.contains("phandle = <0x01>;"));

        let timer = node(&dts, "timer");
        assert!(timer.contains("compatible = \"arm,armv8-timer\";"));
        assert!(timer.contains("always-on;"));
        assert!(
            timer.contains(
                "interrupts = <0x01 0x0d 0x04 0x01 0x0e 0x04 0x01 0x0b 0x04 0x01 0x0a 0x04>;"
            ),
            "{timer}"
        );

        let uart = node(&dts, "pl011@9000000");
        assert!(uart.contains("compatible = \"arm,pl011\\0arm,primecell\";"));
        assert!(uart.contains("reg = <0x00 0x9000000 0x00 0x1000>;"));
        assert!(uart.contains("interrupts = <0x00 0x01 0x01>;"));
        assert!(uart.contains("clocks = <0x02 0x02>;"));
        assert!(uart.contains("clock-names = \"uartclk\\0apb_pclk\";"));
        let clock = node(&dts, "apb-pclk");
        assert!(clock.contains("clock-frequency = <0x16e3600>;"), "{clock}");
        assert!(clock.contains("phandle = <0x02>;"));

        for (name, reg, spi) in [
            ("virtio_mmio@a000000", "0xa000000", "0x10"),
            ("virtio_mmio@a000200", "0xa000200", "0x11"),
        ] {
            let v = node(&dts, name);
            assert!(v.contains("compatible = \"virtio,mmio\";"));
            assert!(
                v.contains(&format!("reg = <0x00 {reg} 0x00 0x200>;")),
                "{v}"
            );
            assert!(
                v.contains(&format!("interrupts = <0x00 {spi} 0x01>;")),
                "{v}"
            );
            assert!(v.contains("dma-coherent;"));
        }
        assert_eq!(dts.matches("virtio_mmio@").count(), 2);

        let chosen = node(&dts, "chosen");
        assert!(chosen.contains("bootargs = \"reboot=c,panic_w panic=-1 quiet -- init arg\";"));
        assert!(chosen.contains("stdout-path = \"/pl011@9000000\";"));
        assert!(
            chosen.contains("linux,initrd-start = <0x00 0x48000000>;"),
            "{chosen}"
        );
        assert!(chosen.contains("linux,initrd-end = <0x00 0x48123456>;"));
    }

    #[test]
    fn without_devices_or_initrd_those_nodes_are_absent() {
        let dts = decompile(&create(&machine(&[], None)).unwrap());
        assert!(!dts.contains("virtio_mmio"));
        assert!(!dts.contains("linux,initrd"));
        assert!(node(&dts, "chosen").contains("bootargs"));
    }

    #[test]
    fn cpus_past_sixteen_go_to_the_next_cluster() {
        let mut m = machine(&[], None);
        m.cpus = 17;
        let dts = decompile(&create(&m).unwrap());
        assert!(node(&dts, "cpu@f").contains("reg = <0x0f>;"));
        assert!(node(&dts, "cpu@100").contains("reg = <0x100>;"));
    }
}
