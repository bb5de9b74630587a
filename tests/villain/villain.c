/*
 * villain: a malicious guest for hk's VMM, in the spirit of Cloud Hypervisor's
 * virtio-villain. It runs as PID 1 (a static binary in an initramfs), takes every
 * virtio-mmio device away from the kernel's drivers and then drives the devices itself
 * through /dev/mem, the way a hostile driver would: registers of every width at every
 * offset, status bits out of order, broken queue sizes and ring addresses, and real rings
 * in guest RAM carrying descriptor loops, huge lengths, addresses outside RAM or inside
 * MMIO, broken indirect tables, runaway avail indices and resets in the middle of
 * requests.
 *
 * Rings and buffers live in an "arena": guest RAM the kernel was told to leave alone
 * (memmap=SIZE$ADDR on the command line), so it is not System RAM and STRICT_DEVMEM lets
 * /dev/mem map it, its physical addresses are known, and whatever a device writes there
 * cannot corrupt the guest kernel. Canary pages in it are never named by any descriptor:
 * a device that writes them wrote where it was not told to.
 *
 * Arguments (after `--` on the kernel command line): ARENA_ADDR ARENA_SIZE [vsock port of a
 * host listener]. After the attacks, each device must still serve a well-formed request.
 * The VM ends through hk's control page: status 0 when every device survived and no
 * canary was touched, 1 otherwise. Every line it prints starts with "villain:".
 *
 * Build: gcc -static -O2 -o villain villain.c
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* ---- virtio-mmio registers (virtio 1.x §4.2.2) ---- */
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_DEV_FEAT 0x010
#define R_DEV_FEAT_SEL 0x014
#define R_DRV_FEAT 0x020
#define R_DRV_FEAT_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INT_STATUS 0x060
#define R_INT_ACK 0x064
#define R_STATUS 0x070
#define R_DESC_LO 0x080
#define R_DESC_HI 0x084
#define R_AVAIL_LO 0x090
#define R_AVAIL_HI 0x094
#define R_USED_LO 0x0a0
#define R_USED_HI 0x0a4
#define R_CONFIG 0x100

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40
#define S_FAILED 0x80

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4

#define CTL_BASE 0xd0000000ull
#define WINDOW 0x1000
#define MAX_DEVS 16

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
} __attribute__((packed));

/* ---- output ---- */
static int failures;
static int attacks;
static struct timespec t0;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9;
}

static void say(const char *fmt, ...)
{
	char buf[512];
	int n = snprintf(buf, sizeof buf, "villain: [%7.2f] ", now());
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof buf - n, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof buf - 2)
		n = sizeof buf - 2;
	buf[n++] = '\n';
	(void)!write(1, buf, n);
}

static void fail(const char *fmt, ...)
{
	char buf[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	say("FAIL %s", buf);
	failures++;
}

/* ---- MMIO through /dev/mem ---- */
static volatile uint8_t *mmio; /* the control page, then the device windows */
static size_t mmio_len;

static inline void mb(void) { __sync_synchronize(); }

static uint32_t rd(volatile uint8_t *w, unsigned off) { return *(volatile uint32_t *)(w + off); }
static void wr(volatile uint8_t *w, unsigned off, uint32_t v) { *(volatile uint32_t *)(w + off) = v; }

static void ctl_exit(uint32_t status)
{
	say("ending the VM through the control page with status %u", status);
	/* The console is a UART the kernel feeds from its buffer, a byte per interrupt: what
	 * is still buffered when the VM ends is lost (as on a machine that powers off), and
	 * under load that was the summary. Wait until it has gone out. */
	(void)tcdrain(1);
	if (mmio)
		*(volatile uint32_t *)(mmio + 4) = status;
	sleep(5);
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

/* ---- the arena ---- */
static uint64_t arena_phys, arena_size, ram_end;
static uint8_t *arena;
/* Layout (offsets in the arena). */
#define A_DESC 0x00000     /* descriptor tables: one 64 KiB slot per queue */
#define A_AVAIL 0x40000    /* avail rings, 4 KiB per queue */
#define A_USED 0x50000     /* used rings, 4 KiB per queue */
#define A_CANARY1 0x60000  /* never named by a descriptor */
#define A_HDR 0x80000      /* request headers */
#define A_STATUS 0x81000   /* status bytes */
#define A_INDIRECT 0x82000 /* indirect tables */
#define A_CANARY2 0xc0000
#define A_DATA 0x100000    /* data buffers: 1 MiB */
#define A_BIG 0x200000     /* where huge-length buffers start: the rest of the arena */
#define CANARY_LEN 0x20000
#define CANARY_BYTE 0xa5

static uint64_t P(uint64_t off) { return arena_phys + off; }
static void *V(uint64_t off) { return arena + off; }

static void canaries_set(void)
{
	memset(V(A_CANARY1), CANARY_BYTE, CANARY_LEN);
	memset(V(A_CANARY2), CANARY_BYTE, CANARY_LEN);
}

static int canaries_check(const char *when)
{
	for (uint64_t base = A_CANARY1;; base = A_CANARY2) {
		const uint8_t *c = V(base);
		for (int i = 0; i < CANARY_LEN; i++)
			if (c[i] != CANARY_BYTE) {
				fail("%s: a device wrote canary byte at arena+%#lx", when,
				     (unsigned long)(base + i));
				canaries_set();
				return 0;
			}
		if (base == A_CANARY2)
			return 1;
	}
}

/* ---- one device ---- */
struct queue {
	int index;
	uint16_t size;
	struct desc *desc;
	volatile uint16_t *avail; /* flags, idx, ring[size] */
	volatile uint8_t *used;   /* flags, idx, {id, len}[size] */
	uint64_t desc_p, avail_p, used_p;
	uint16_t avail_idx, used_seen;
};

struct dev {
	int n;
	uint64_t base;
	int irq;
	volatile uint8_t *w;
	uint32_t id;
	const char *kind;
	uint64_t offered;
	int nqueues;
	uint16_t qmax[4];
	struct queue q[3];
};

static struct dev devs[MAX_DEVS];
static int ndevs;

static uint16_t used_idx(struct queue *q) { mb(); return *(volatile uint16_t *)(q->used + 2); }
static uint32_t used_len(struct queue *q, uint16_t i)
{
	return *(volatile uint32_t *)(q->used + 4 + 8 * (i % q->size) + 4);
}
static uint32_t used_id(struct queue *q, uint16_t i)
{
	return *(volatile uint32_t *)(q->used + 4 + 8 * (i % q->size));
}

static void queue_init(struct dev *d, int qi, uint16_t size)
{
	struct queue *q = &d->q[qi];
	q->index = qi;
	q->size = size;
	q->desc_p = P(A_DESC + 0x10000 * qi);
	q->avail_p = P(A_AVAIL + 0x1000 * qi);
	q->used_p = P(A_USED + 0x1000 * qi);
	q->desc = V(A_DESC + 0x10000 * qi);
	q->avail = V(A_AVAIL + 0x1000 * qi);
	q->used = V(A_USED + 0x1000 * qi);
	memset(q->desc, 0, 16 * size);
	memset((void *)q->avail, 0, 0x1000);
	memset((void *)q->used, 0, 0x1000);
	q->avail_idx = q->used_seen = 0;
}

static void program_queue(struct dev *d, struct queue *q, uint64_t desc, uint64_t avail,
			  uint64_t used, uint32_t num)
{
	wr(d->w, R_QUEUE_SEL, q->index);
	wr(d->w, R_QUEUE_NUM, num);
	wr(d->w, R_DESC_LO, (uint32_t)desc);
	wr(d->w, R_DESC_HI, desc >> 32);
	wr(d->w, R_AVAIL_LO, (uint32_t)avail);
	wr(d->w, R_AVAIL_HI, avail >> 32);
	wr(d->w, R_USED_LO, (uint32_t)used);
	wr(d->w, R_USED_HI, used >> 32);
	wr(d->w, R_QUEUE_READY, 1);
}

static void dev_reset(struct dev *d)
{
	wr(d->w, R_STATUS, 0);
	uint32_t s = rd(d->w, R_STATUS);
	if (s != 0)
		fail("%s: status reads %#x after a reset", d->kind, s);
	wr(d->w, R_INT_ACK, 0xffffffff);
}

/* Negotiates VERSION_1 (and nothing else) and leaves the device before DRIVER_OK. */
static int negotiate(struct dev *d)
{
	dev_reset(d);
	wr(d->w, R_STATUS, S_ACK);
	wr(d->w, R_STATUS, S_ACK | S_DRIVER);
	wr(d->w, R_DRV_FEAT_SEL, 0);
	wr(d->w, R_DRV_FEAT, 0);
	wr(d->w, R_DRV_FEAT_SEL, 1);
	wr(d->w, R_DRV_FEAT, 1);
	wr(d->w, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	return (rd(d->w, R_STATUS) & S_FEATURES_OK) != 0;
}

/* Resets and brings the device up with its queues at their arena slots. */
static int dev_up(struct dev *d)
{
	if (!negotiate(d)) {
		fail("%s: FEATURES_OK refused for VERSION_1", d->kind);
		return 0;
	}
	for (int i = 0; i < d->nqueues; i++) {
		queue_init(d, i, d->qmax[i] > 256 ? 256 : d->qmax[i]);
		struct queue *q = &d->q[i];
		program_queue(d, q, q->desc_p, q->avail_p, q->used_p, q->size);
	}
	wr(d->w, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	uint32_t s = rd(d->w, R_STATUS);
	if (!(s & S_DRIVER_OK) || (s & (S_NEEDS_RESET | S_FAILED))) {
		fail("%s: a well-formed setup reads status %#x", d->kind, s);
		return 0;
	}
	return 1;
}

static void notify(struct dev *d, int qi) { mb(); wr(d->w, R_QUEUE_NOTIFY, qi); }

/* Makes head `head` available (without notifying). */
static void push(struct queue *q, uint16_t head)
{
	q->avail[2 + q->avail_idx % q->size] = head;
	mb();
	q->avail_idx++;
	q->avail[1] = q->avail_idx;
	mb();
}

/* Waits until the used index moved by `n` past what was seen; how many arrived. */
static int wait_used(struct queue *q, int n, double timeout)
{
	double end = now() + timeout;
	int got;
	for (;;) {
		got = (uint16_t)(used_idx(q) - q->used_seen);
		if (got >= n || now() > end)
			break;
		usleep(200);
	}
	return got;
}

static void set_desc(struct desc *t, int i, uint64_t addr, uint32_t len, uint16_t flags,
		     uint16_t next)
{
	t[i].addr = addr;
	t[i].len = len;
	t[i].flags = flags;
	t[i].next = next;
}

/* ---- register-level attacks, for every device ---- */

static void sweep_registers(struct dev *d)
{
	double start = now();
	int accesses = 0;
	static const uint64_t values[] = {0xffffffffffffffffull, 0, 1, 0x8000000180000001ull};
	for (unsigned off = 0; off < WINDOW; off++) {
		volatile uint8_t *p = d->w + off;
		/* Reads of every width. Unaligned wide accesses near the end cross into the next
		 * window (or into nothing, after the last device). */
		(void)*(volatile uint8_t *)p;
		(void)*(volatile uint16_t *)p;
		(void)*(volatile uint32_t *)p;
		(void)*(volatile uint64_t *)p;
		accesses += 4;
		int nvals = off < R_CONFIG && off % 4 == 0 ? 4 : 1;
		for (int v = 0; v < nvals; v++) {
			uint64_t x = values[v];
			*(volatile uint8_t *)p = (uint8_t)x;
			*(volatile uint16_t *)p = (uint16_t)x;
			*(volatile uint32_t *)p = (uint32_t)x;
			*(volatile uint64_t *)p = x;
			accesses += 4;
		}
		/* Whatever the sweep did to STATUS is undone now and then. */
		if (off % 0x40 == 0x3f)
			wr(d->w, R_STATUS, 0);
	}
	dev_reset(d);
	if (rd(d->w, R_MAGIC) != 0x74726976 || rd(d->w, R_VERSION) != 2 ||
	    rd(d->w, R_DEVICE_ID) != d->id)
		fail("%s: identity registers changed after the sweep", d->kind);
	attacks++;
	say("%s: register sweep: %d accesses at every offset of the window, widths 1/2/4/8, %.1f s",
	    d->kind, accesses, now() - start);
}

static void status_disorder(struct dev *d)
{
	int before = failures;
	/* DRIVER_OK before FEATURES_OK: the device must fail, not start. */
	dev_reset(d);
	wr(d->w, R_STATUS, S_ACK | S_DRIVER | S_DRIVER_OK);
	uint32_t s = rd(d->w, R_STATUS);
	if ((s & S_DRIVER_OK) && !(s & S_FAILED))
		fail("%s: DRIVER_OK before FEATURES_OK accepted (status %#x)", d->kind, s);
	notify(d, 0);
	/* Every bit at once, NEEDS_RESET set by the driver, FEATURES_OK with no features. */
	dev_reset(d);
	wr(d->w, R_STATUS, 0xff);
	notify(d, 0);
	dev_reset(d);
	wr(d->w, R_STATUS, S_NEEDS_RESET);
	dev_reset(d);
	wr(d->w, R_DRV_FEAT_SEL, 0);
	wr(d->w, R_DRV_FEAT, 0xffffffff);
	wr(d->w, R_DRV_FEAT_SEL, 1);
	wr(d->w, R_DRV_FEAT, 0xffffffff);
	wr(d->w, R_DRV_FEAT_SEL, 0x12345);
	wr(d->w, R_DRV_FEAT, 0xffffffff);
	wr(d->w, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
	if (rd(d->w, R_STATUS) & S_FEATURES_OK)
		fail("%s: FEATURES_OK kept with features never offered", d->kind);
	/* Notify before any queue is ready, and before DRIVER_OK. */
	dev_reset(d);
	for (int i = 0; i < 1000; i++)
		notify(d, i % 4);
	/* DRIVER_OK with no queue ready, then notifies; then DRIVER_OK twice. */
	negotiate(d);
	wr(d->w, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	for (int i = 0; i < 1000; i++)
		notify(d, i % 4);
	wr(d->w, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	/* Queue registers written while the device runs must not reach the running queues. */
	wr(d->w, R_QUEUE_SEL, 0);
	wr(d->w, R_QUEUE_NUM, 3);
	wr(d->w, R_DESC_LO, 0xdead0000);
	wr(d->w, R_QUEUE_READY, 1);
	notify(d, 0);
	/* FAILED after DRIVER_OK, then queue registers, then notify. */
	wr(d->w, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK | S_FAILED);
	wr(d->w, R_DESC_LO, 0xd0000000);
	wr(d->w, R_QUEUE_READY, 1);
	notify(d, 0);
	dev_reset(d);
	/* Start/stop churn: each DRIVER_OK starts the device's thread, each reset stops it. */
	double start = now();
	int cycles = 0;
	for (; cycles < 200; cycles++) {
		if (!dev_up(d))
			break;
		notify(d, 0);
		dev_reset(d);
	}
	attacks += 8;
	say("%s: status out of order, notify before ready, %d start/reset cycles in %.1f s: %s",
	    d->kind, cycles, now() - start, failures == before ? "ok" : "FAILED");
}

static void queue_registers(struct dev *d)
{
	int before = failures;
	static const uint32_t sizes[] = {0, 1, 3, 255, 257, 1000, 0x8000, 0xffff, 0x10000,
					 0xffffffff};
	/* Sizes that are zero, not powers of two, above the maximum; queue numbers that do
	 * not exist. Each is made ready and started; then notified. */
	for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++) {
		negotiate(d);
		queue_init(d, 0, 16);
		program_queue(d, &d->q[0], d->q[0].desc_p, d->q[0].avail_p, d->q[0].used_p,
			      sizes[i]);
		wr(d->w, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
		notify(d, 0);
		dev_reset(d);
	}
	static const uint32_t sels[] = {3, 4, 16, 0xffff, 0x80000000, 0xffffffff};
	for (unsigned i = 0; i < sizeof sels / sizeof *sels; i++) {
		negotiate(d);
		wr(d->w, R_QUEUE_SEL, sels[i]);
		(void)rd(d->w, R_QUEUE_NUM_MAX);
		(void)rd(d->w, R_QUEUE_READY);
		wr(d->w, R_QUEUE_NUM, 16);
		wr(d->w, R_DESC_LO, 0x1000);
		wr(d->w, R_QUEUE_READY, 1);
		wr(d->w, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
		notify(d, sels[i]);
		dev_reset(d);
	}
	/* Ring addresses outside RAM, in the MMIO windows (the control page, this device's
	 * own registers), in the legacy hole, wrapping, misaligned, straddling the end of RAM
	 * or the start of the hole, and all three rings on one page. */
	uint64_t own = d->base;
	uint64_t bad[][3] = {
		{0xfffffffffffff000ull, P(A_AVAIL), P(A_USED)},
		{P(A_DESC), 0xfffffffffffffffeull, P(A_USED)},
		{P(A_DESC), P(A_AVAIL), 0xfffffffffffffffcull},
		{ram_end, P(A_AVAIL), P(A_USED)},
		{ram_end - 16, P(A_AVAIL), P(A_USED)},
		{P(A_DESC), P(A_AVAIL), ram_end - 8},
		{CTL_BASE, P(A_AVAIL), P(A_USED)},
		{P(A_DESC), CTL_BASE, P(A_USED)},
		{P(A_DESC), P(A_AVAIL), CTL_BASE},
		{own, own, own},
		{0xa0000, P(A_AVAIL), P(A_USED)},
		{0xfff80, P(A_AVAIL), P(A_USED)},       /* starts in the hole, ends in RAM */
		{P(A_DESC), 0xffff0, P(A_USED)},
		{P(A_DESC), P(A_AVAIL), 0x9f000},       /* ends in the hole */
		{P(A_DESC) + 1, P(A_AVAIL) + 1, P(A_USED) + 2},
		{P(A_DESC), P(A_DESC), P(A_DESC)},
		{0xfec00000, 0xfee00000, P(A_USED)},    /* IOAPIC, LAPIC */
		{1ull << 40, P(A_AVAIL), P(A_USED)},
	};
	int needs_reset = 0;
	for (unsigned i = 0; i < sizeof bad / sizeof *bad; i++) {
		negotiate(d);
		queue_init(d, 0, 16);
		/* A chain that a device serving the broken queue anyway would use. */
		set_desc(d->q[0].desc, 0, P(A_DATA), 64, F_WRITE, 0);
		push(&d->q[0], 0);
		program_queue(d, &d->q[0], bad[i][0], bad[i][1], bad[i][2], 16);
		wr(d->w, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
		/* The device may set NEEDS_RESET a moment after DRIVER_OK (it starts on the
		 * VMM's thread). */
		uint32_t s = 0;
		for (int k = 0; k < 50 && !(s & S_NEEDS_RESET); k++) {
			s = rd(d->w, R_STATUS);
			if (!(s & S_NEEDS_RESET))
				usleep(1000);
		}
		if (s & S_NEEDS_RESET)
			needs_reset++;
		for (int k = 0; k < 100; k++)
			notify(d, 0);
		usleep(20000);
		dev_reset(d);
		canaries_check("bad ring addresses");
	}
	attacks += 3;
	say("%s: queue sizes (10), queue numbers (6), ring addresses (%d, %d refused with "
	    "NEEDS_RESET): %s",
	    d->kind, (int)(sizeof bad / sizeof *bad), needs_reset,
	    failures == before ? "ok" : "FAILED");
}

/* ---- chain attacks on a device's request queue ---- */

/* One attack: `build` fills the table of queue `qi` and returns the head (or -1 if it
 * pushed itself); the device is then notified and given `wait` seconds. The device is
 * reset and set up again afterwards, since a broken chain may break the queue. */
typedef int (*build_fn)(struct dev *, struct queue *);

struct chain_attack {
	const char *name;
	build_fn build;
};

static int answered, unanswered;

static void run_chain_attack(struct dev *d, int qi, const struct chain_attack *a)
{
	if (!dev_up(d))
		return;
	struct queue *q = &d->q[qi];
	int head = a->build(d, q);
	if (head >= 0)
		push(q, head);
	notify(d, qi);
	int got = wait_used(q, 1, 0.3);
	if (got > 0)
		answered++;
	else
		unanswered++;
	if (rd(d->w, R_STATUS) & S_FAILED)
		fail("%s: %s: status FAILED", d->kind, a->name);
	dev_reset(d);
	canaries_check(a->name);
	attacks++;
}

/* Chains every device parses the same way (the descriptor walk is shared). */
static int c_loop(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, P(A_HDR), 16, F_NEXT, 1);
	set_desc(q->desc, 1, P(A_DATA), 512, F_WRITE | F_NEXT, 0);
	return 0;
}
static int c_self_loop(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 5, P(A_DATA), 512, F_WRITE | F_NEXT, 5);
	return 5;
}
static int c_long_loop(struct dev *d, struct queue *q)
{
	for (int i = 0; i < q->size; i++)
		set_desc(q->desc, i, P(A_DATA), 1, F_WRITE | F_NEXT, (i + 1) % q->size);
	return 0;
}
static int c_next_past_queue(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, P(A_HDR), 16, F_NEXT, q->size + 7);
	return 0;
}
static int c_next_ffff(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, P(A_DATA), 16, F_WRITE | F_NEXT, 0xffff);
	return 0;
}
static int c_head_past_queue(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, P(A_DATA), 16, F_WRITE, 0);
	push(q, q->size);
	push(q, 0xffff);
	return -1;
}
static int c_huge_len(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, P(A_HDR), 16, F_NEXT, 1);
	set_desc(q->desc, 1, P(A_BIG), 0xffffffff, F_WRITE | F_NEXT, 2);
	set_desc(q->desc, 2, P(A_STATUS), 1, F_WRITE, 0);
	return 0;
}
static int c_all_huge(struct dev *d, struct queue *q)
{
	/* Every descriptor 4 GiB long: the chain claims 4 GiB * queue size. */
	for (int i = 0; i < q->size; i++)
		set_desc(q->desc, i, P(A_BIG), 0xffffffff,
			 F_WRITE | (i + 1 < q->size ? F_NEXT : 0), i + 1);
	return 0;
}
static int c_past_ram(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, P(A_HDR), 16, F_NEXT, 1);
	set_desc(q->desc, 1, ram_end - 256, 4096, F_WRITE | F_NEXT, 2);
	set_desc(q->desc, 2, P(A_STATUS), 1, F_WRITE, 0);
	return 0;
}
static int c_in_mmio(struct dev *d, struct queue *q)
{
	/* Buffers on the control page (offset 4 would end the VM) and on the device's own
	 * registers: a device must only ever touch RAM. */
	set_desc(q->desc, 0, CTL_BASE, 16, F_NEXT, 1);
	set_desc(q->desc, 1, CTL_BASE, 512, F_WRITE | F_NEXT, 2);
	set_desc(q->desc, 2, d->base + R_STATUS, 1, F_WRITE, 0);
	return 0;
}
static int c_wrap(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, 0xffffffffffffff00ull, 0x1000, F_NEXT, 1);
	set_desc(q->desc, 1, 0xfffffffffffffff0ull, 0x100, F_WRITE, 0);
	return 0;
}
static int c_hole(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, 0x9f000, 0x2000, F_WRITE, 0); /* RAM, then the legacy hole */
	return 0;
}
static int c_zero_len(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, P(A_HDR), 0, F_NEXT, 1);
	set_desc(q->desc, 1, P(A_DATA), 0, F_WRITE, 0);
	return 0;
}
static int c_readable_only(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, P(A_HDR), 16, F_NEXT, 1);
	set_desc(q->desc, 1, P(A_DATA), 512, 0, 0);
	return 0;
}
static int c_write_then_read(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, P(A_DATA), 512, F_WRITE | F_NEXT, 1);
	set_desc(q->desc, 1, P(A_HDR), 16, F_NEXT, 2);
	set_desc(q->desc, 2, P(A_STATUS), 1, F_WRITE, 0);
	return 0;
}

/* Indirect tables. */
static struct desc *itab(int n) { return V(A_INDIRECT + 0x1000 * n); }
static uint64_t itab_p(int n) { return P(A_INDIRECT + 0x1000 * n); }

static int c_ind_zero(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, itab_p(0), 0, F_INDIRECT, 0);
	return 0;
}
static int c_ind_odd(struct dev *d, struct queue *q)
{
	set_desc(itab(0), 0, P(A_DATA), 64, F_WRITE, 0);
	set_desc(q->desc, 0, itab_p(0), 17, F_INDIRECT, 0);
	return 0;
}
static int c_ind_huge(struct dev *d, struct queue *q)
{
	memset(itab(0), 0, 0x1000);
	set_desc(q->desc, 0, itab_p(0), 0xfffffff0, F_INDIRECT, 0);
	return 0;
}
static int c_ind_max(struct dev *d, struct queue *q)
{
	/* 65535 entries (1 MiB of table, in the big area), all chained. */
	struct desc *t = V(A_BIG);
	for (int i = 0; i < 65535; i++)
		set_desc(t, i, P(A_DATA), 1, F_WRITE | (i < 65534 ? F_NEXT : 0), i + 1);
	set_desc(q->desc, 0, P(A_BIG), 65535 * 16, F_INDIRECT, 0);
	return 0;
}
static int c_ind_oversized(struct dev *d, struct queue *q)
{
	/* 65536 entries and more: beyond what a u16 index can name. */
	struct desc *t = V(A_BIG);
	for (int i = 0; i < 65536 + 16; i++)
		set_desc(t, i, P(A_DATA), 1, F_WRITE | F_NEXT, (i + 1) & 0xffff);
	set_desc(q->desc, 0, P(A_BIG), (65536 + 16) * 16, F_INDIRECT, 0);
	return 0;
}
static int c_ind_nested(struct dev *d, struct queue *q)
{
	set_desc(itab(1), 0, P(A_DATA), 64, F_WRITE, 0);
	set_desc(itab(0), 0, itab_p(1), 16, F_INDIRECT, 0);
	set_desc(q->desc, 0, itab_p(0), 16, F_INDIRECT, 0);
	return 0;
}
static int c_ind_self(struct dev *d, struct queue *q)
{
	set_desc(itab(0), 0, itab_p(0), 16, F_INDIRECT, 0);
	set_desc(q->desc, 0, itab_p(0), 16, F_INDIRECT, 0);
	return 0;
}
static int c_ind_loop(struct dev *d, struct queue *q)
{
	set_desc(itab(0), 0, P(A_HDR), 16, F_NEXT, 1);
	set_desc(itab(0), 1, P(A_DATA), 64, F_WRITE | F_NEXT, 2);
	set_desc(itab(0), 2, P(A_STATUS), 1, F_WRITE | F_NEXT, 0);
	set_desc(q->desc, 0, itab_p(0), 48, F_INDIRECT, 0);
	return 0;
}
static int c_ind_next_past(struct dev *d, struct queue *q)
{
	set_desc(itab(0), 0, P(A_HDR), 16, F_NEXT, 9);
	set_desc(itab(0), 1, P(A_STATUS), 1, F_WRITE, 0);
	set_desc(q->desc, 0, itab_p(0), 32, F_INDIRECT, 0);
	return 0;
}
static int c_ind_outside(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, ram_end - 16, 64, F_INDIRECT, 0);
	return 0;
}
static int c_ind_mmio(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, CTL_BASE, 64, F_INDIRECT, 0);
	return 0;
}
static int c_ind_with_next(struct dev *d, struct queue *q)
{
	set_desc(itab(0), 0, P(A_DATA), 64, F_WRITE, 0);
	set_desc(q->desc, 0, itab_p(0), 16, F_INDIRECT | F_NEXT, 1);
	set_desc(q->desc, 1, itab_p(0), 16, F_INDIRECT | F_WRITE, 0);
	return 0;
}
static int c_ind_after_direct(struct dev *d, struct queue *q)
{
	set_desc(itab(0), 0, P(A_DATA), 64, F_WRITE, 0);
	set_desc(q->desc, 0, P(A_HDR), 16, F_NEXT, 1);
	set_desc(q->desc, 1, itab_p(0), 16, F_INDIRECT, 0);
	return 0;
}
static int c_avail_jump(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, P(A_DATA), 64, F_WRITE, 0);
	for (int i = 0; i < q->size; i++)
		q->avail[2 + i] = 0;
	q->avail_idx += 0x8000;
	q->avail[1] = q->avail_idx;
	return -1;
}
static int c_avail_jump_max(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, P(A_DATA), 64, F_WRITE, 0);
	q->avail_idx += 0xffff;
	q->avail[1] = q->avail_idx;
	return -1;
}
static int c_avail_size_plus_one(struct dev *d, struct queue *q)
{
	set_desc(q->desc, 0, P(A_DATA), 64, F_WRITE, 0);
	for (int i = 0; i < q->size; i++)
		q->avail[2 + i] = 0;
	q->avail_idx += q->size + 1;
	q->avail[1] = q->avail_idx;
	return -1;
}
static int c_full_of_same_head(struct dev *d, struct queue *q)
{
	/* Every avail slot names head 0: the same buffers used `size` times. */
	set_desc(q->desc, 0, P(A_DATA), 64, F_WRITE, 0);
	for (int i = 0; i < q->size; i++)
		push(q, 0);
	return -1;
}
static int c_used_on_desc(struct dev *d, struct queue *q)
{
	/* The used ring on top of the descriptor table and the avail ring: each used entry
	 * the device writes rewrites descriptors it may read next. */
	wr(d->w, R_STATUS, 0);
	negotiate(d);
	for (int i = 0; i < q->size; i++)
		set_desc(q->desc, i, P(A_DATA), 64, F_WRITE | F_NEXT, (i + 1) % q->size);
	for (int i = 0; i < q->size; i++)
		q->avail[2 + i] = i;
	q->avail_idx = q->size;
	q->avail[1] = q->avail_idx;
	for (int i = 0; i < d->nqueues; i++)
		program_queue(d, &d->q[i], d->q[i].desc_p, d->q[i].avail_p,
			      i == q->index ? q->desc_p : d->q[i].used_p, d->q[i].size);
	wr(d->w, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	return -1;
}

static const struct chain_attack generic_attacks[] = {
	{"descriptor loop", c_loop},
	{"self loop", c_self_loop},
	{"loop through the whole table", c_long_loop},
	{"next past the queue", c_next_past_queue},
	{"next 0xffff", c_next_ffff},
	{"head past the queue", c_head_past_queue},
	{"huge length", c_huge_len},
	{"every descriptor 4 GiB", c_all_huge},
	{"buffer past the end of RAM", c_past_ram},
	{"buffers in MMIO", c_in_mmio},
	{"wrapping addresses", c_wrap},
	{"buffer into the legacy hole", c_hole},
	{"zero lengths", c_zero_len},
	{"no writable descriptor", c_readable_only},
	{"writable before readable", c_write_then_read},
	{"indirect table of length 0", c_ind_zero},
	{"indirect table of length 17", c_ind_odd},
	{"indirect table of 4 GiB", c_ind_huge},
	{"indirect table of 65535 entries", c_ind_max},
	{"indirect table of 65552 entries", c_ind_oversized},
	{"nested indirect", c_ind_nested},
	{"indirect table naming itself", c_ind_self},
	{"loop inside an indirect table", c_ind_loop},
	{"next past an indirect table", c_ind_next_past},
	{"indirect table past RAM", c_ind_outside},
	{"indirect table in MMIO", c_ind_mmio},
	{"indirect with NEXT", c_ind_with_next},
	{"indirect after a direct descriptor", c_ind_after_direct},
	{"avail idx +0x8000", c_avail_jump},
	{"avail idx +0xffff", c_avail_jump_max},
	{"avail idx +size+1", c_avail_size_plus_one},
	{"one head in every slot", c_full_of_same_head},
	{"used ring on the descriptor table", c_used_on_desc},
};

static void chain_attacks(struct dev *d, int qi)
{
	int before = failures;
	double start = now();
	answered = unanswered = 0;
	int n = sizeof generic_attacks / sizeof *generic_attacks;
	for (int i = 0; i < n; i++)
		run_chain_attack(d, qi, &generic_attacks[i]);
	say("%s: queue %d: %d malformed chains (%d answered, %d not), %.1f s: %s", d->kind, qi, n,
	    answered, unanswered, now() - start, failures == before ? "ok" : "FAILED");
}

/* ---- virtio-blk ---- */
#define BLK_IN 0
#define BLK_OUT 1
#define BLK_FLUSH 4
#define BLK_GET_ID 8

static uint64_t blk_capacity(struct dev *d)
{
	return rd(d->w, R_CONFIG) | (uint64_t)rd(d->w, R_CONFIG + 4) << 32;
}

/* One request, header + data + status in three descriptors; the status, or -1 if the
 * device did not answer. */
static int blk_request(struct dev *d, uint32_t type, uint64_t sector, uint64_t data, uint32_t len,
		       int data_writable, uint32_t *used)
{
	struct queue *q = &d->q[0];
	uint32_t *h = V(A_HDR);
	h[0] = type;
	h[1] = 0;
	*(uint64_t *)(h + 2) = sector;
	*(volatile uint8_t *)V(A_STATUS) = 0xee;
	int n = 0;
	set_desc(q->desc, n, P(A_HDR), 16, F_NEXT, n + 1), n++;
	if (len)
		set_desc(q->desc, n, data, len, F_NEXT | (data_writable ? F_WRITE : 0), n + 1), n++;
	set_desc(q->desc, n, P(A_STATUS), 1, F_WRITE, 0);
	push(q, 0);
	notify(d, 0);
	if (wait_used(q, 1, 3.0) < 1)
		return -1;
	if (used)
		*used = used_len(q, q->used_seen);
	q->used_seen++;
	return *(volatile uint8_t *)V(A_STATUS);
}

static void blk_attacks(struct dev *d)
{
	int before = failures;
	double start = now();
	uint64_t cap = blk_capacity(d);
	int ro = (d->offered >> 5) & 1;
	uint32_t used;
	struct {
		const char *name;
		uint32_t type;
		uint64_t sector;
		uint64_t data;
		uint32_t len;
		int w;
		int want; /* expected status, -2 for "any answer" */
	} reqs[] = {
		{"read past the end", BLK_IN, cap, P(A_DATA), 512, 1, 1},
		{"read across the end", BLK_IN, cap - 1, P(A_DATA), 1024, 1, 1},
		{"sector 2^64-1", BLK_IN, ~0ull, P(A_DATA), 512, 1, 1},
		{"sector overflowing bytes", BLK_IN, 1ull << 55, P(A_DATA), 512, 1, 1},
		{"read of half a sector", BLK_IN, 0, P(A_DATA), 100, 1, 1},
		{"read into a readable buffer", BLK_IN, 0, P(A_DATA), 512, 0, 1},
		{"read of 4 GiB", BLK_IN, 0, P(A_BIG), 0xfffffe00, 1, 1},
		{"read past the end of RAM", BLK_IN, 0, ram_end - 512, 1024, 1, 1},
		{"read into the control page", BLK_IN, 0, CTL_BASE, 512, 1, 1},
		{"write from the control page", BLK_OUT, 0, CTL_BASE, 512, 0, 1},
		{"write past the end", BLK_OUT, cap, P(A_DATA), 512, 0, 1},
		{"write of a writable buffer", BLK_OUT, 0, P(A_DATA), 512, 1, 1},
		{"write from past RAM", BLK_OUT, 2, ram_end - 256, 512, 0, 1},
		{"get-id into 1 byte", BLK_GET_ID, 0, P(A_DATA), 1, 1, 0},
		/* A chain of more than 4 GiB in all is illegal (§2.7.5): dropped, any answer. */
		{"get-id into 4 GiB", BLK_GET_ID, 0, P(A_BIG), 0xffffffff, 1, -2},
		{"get-id from a readable buffer", BLK_GET_ID, 0, P(A_DATA), 20, 0, 1},
		{"flush with data", BLK_FLUSH, 0, P(A_DATA), 512, 1, -2},
		{"unknown type", 0x1234, 0, P(A_DATA), 512, 1, 2},
		{"type 2^32-1", 0xffffffff, ~0ull, P(A_DATA), 512, 1, 2},
	};
	if (!dev_up(d))
		return;
	memset(V(A_DATA), 0x5a, 64);
	for (unsigned i = 0; i < sizeof reqs / sizeof *reqs; i++) {
		if (!strcmp(reqs[i].name, "get-id into 1 byte"))
			memset(V(A_DATA), 0x77, 32);
		int st = blk_request(d, reqs[i].type, reqs[i].sector, reqs[i].data, reqs[i].len,
				     reqs[i].w, &used);
		attacks++;
		if (st < 0) {
			fail("blk: %s: no answer", reqs[i].name);
			dev_up(d);
			continue;
		}
		if (reqs[i].want != -2 && st != reqs[i].want)
			fail("blk: %s: status %d, expected %d", reqs[i].name, st, reqs[i].want);
		if (!strcmp(reqs[i].name, "get-id into 1 byte")) {
			const uint8_t *b = V(A_DATA);
			if (b[1] != 0x77 || used != 2)
				fail("blk: get-id into 1 byte wrote %u bytes (byte 1 is %#x)", used,
				     b[1]);
		}
	}
	if (!ro) {
		/* A write whose data descriptor lies partly past RAM must not reach the disk
		 * at all: sector 2 keeps its marker. */
		memset(V(A_DATA), 0, 512);
		int st = blk_request(d, BLK_IN, 2, P(A_DATA), 512, 1, NULL);
		if (st != 0 || memcmp(V(A_DATA), "villain-sector-2", 16))
			fail("blk: sector 2 changed by refused writes (status %d, '%.16s')", st,
			     (char *)V(A_DATA));
	}
	/* A chain with the header split byte by byte over 16 descriptors and the status in
	 * the middle of a longer writable one: legal, and must work. */
	{
		struct queue *q = &d->q[0];
		uint8_t *h = V(A_HDR);
		memset(h, 0, 16); /* read, sector 0 */
		for (int i = 0; i < 16; i++)
			set_desc(q->desc, i, P(A_HDR) + i, 1, F_NEXT, i + 1);
		set_desc(q->desc, 16, P(A_DATA), 513, F_WRITE, 0);
		memset(V(A_DATA), 0, 600);
		push(q, 0);
		notify(d, 0);
		if (wait_used(q, 1, 3.0) < 1)
			fail("blk: split header: no answer");
		else {
			q->used_seen++;
			if (((uint8_t *)V(A_DATA))[512] != 0 || memcmp(V(A_DATA), "villain-disk", 12))
				fail("blk: split header: status %d",
				     ((uint8_t *)V(A_DATA))[512]);
		}
		attacks++;
	}
	/* Reset in the middle of requests: 64 reads of 64 KiB each, then a reset right after
	 * the notify. Once status reads 0, the device must not touch the rings or buffers. */
	for (int round = 0; round < 20; round++) {
		struct queue *q = &d->q[0];
		dev_up(d);
		uint32_t *h = V(A_HDR);
		h[0] = BLK_IN;
		h[1] = 0;
		*(uint64_t *)(h + 2) = 0;
		int reqs64 = cap >= 128 ? 64 : 0;
		for (int i = 0; i < reqs64; i++) {
			set_desc(q->desc, 3 * i, P(A_HDR), 16, F_NEXT, 3 * i + 1);
			set_desc(q->desc, 3 * i + 1, P(A_BIG) + 0x10000 * i, 0x10000, F_WRITE | F_NEXT,
				 3 * i + 2);
			set_desc(q->desc, 3 * i + 2, P(A_STATUS) + i, 1, F_WRITE, 0);
			q->avail[2 + i] = 3 * i;
		}
		q->avail_idx = reqs64;
		mb();
		q->avail[1] = q->avail_idx;
		notify(d, 0);
		if (round % 2)
			usleep(100 * round);
		wr(d->w, R_STATUS, 0);
		if (rd(d->w, R_STATUS) != 0)
			fail("blk: status not 0 after a reset mid-request");
		uint16_t idx = used_idx(q);
		memset((void *)(q->used + 4), 0xcc, 8 * 64);
		memset(V(A_STATUS), 0xcc, 64);
		usleep(50000);
		if (used_idx(q) != idx || ((uint8_t *)q->used)[4] != 0xcc ||
		    ((uint8_t *)V(A_STATUS))[0] != 0xcc)
			fail("blk: the device touched the rings after a reset (round %d)", round);
		attacks++;
	}
	say("%s: %d malformed requests, split header, 20 resets mid-request, %.1f s: %s", d->kind,
	    (int)(sizeof reqs / sizeof *reqs), now() - start, failures == before ? "ok" : "FAILED");
}

/* After everything: a plain read of sector 0 must work. */
static int blk_sane(struct dev *d)
{
	if (!dev_up(d))
		return 0;
	memset(V(A_DATA), 0, 512);
	int st = blk_request(d, BLK_IN, 0, P(A_DATA), 512, 1, NULL);
	dev_reset(d);
	if (st != 0 || memcmp(V(A_DATA), "villain-disk", 12)) {
		fail("blk: a plain read of sector 0 after the attacks: status %d", st);
		return 0;
	}
	return 1;
}

/* ---- virtio-rng ---- */
static int rng_sane(struct dev *d)
{
	if (!dev_up(d))
		return 0;
	struct queue *q = &d->q[0];
	memset(V(A_DATA), 0, 64);
	set_desc(q->desc, 0, P(A_DATA), 64, F_WRITE, 0);
	push(q, 0);
	notify(d, 0);
	int ok = wait_used(q, 1, 3.0) == 1 && used_len(q, 0) == 64;
	int nonzero = 0;
	for (int i = 0; i < 64; i++)
		nonzero |= ((uint8_t *)V(A_DATA))[i];
	dev_reset(d);
	if (!ok || !nonzero) {
		fail("rng: a plain 64-byte request after the attacks was not answered");
		return 0;
	}
	return 1;
}

static void rng_attacks(struct dev *d)
{
	int before = failures;
	/* A full queue of 4 GiB buffers, notified over and over: bounded work per request,
	 * the device must stay responsive (a reset must stop it quickly). */
	dev_up(d);
	struct queue *q = &d->q[0];
	for (int i = 0; i < q->size; i++) {
		set_desc(q->desc, i, P(A_BIG), 0xffffffff, F_WRITE, 0);
		push(q, i);
	}
	notify(d, 0);
	int got = wait_used(q, q->size, 20.0);
	double t = now();
	dev_reset(d);
	double reset_time = now() - t;
	if (got < q->size)
		fail("rng: %d of %d 4 GiB requests answered", got, q->size);
	if (used_len(q, 0) > 65536)
		fail("rng: answered %u bytes for one request", used_len(q, 0));
	if (reset_time > 1.0)
		fail("rng: a reset took %.2f s", reset_time);
	attacks++;
	say("%s: %d requests of 4 GiB each: %d answered, reset in %.1f ms: %s", d->kind, q->size,
	    got, reset_time * 1000, failures == before ? "ok" : "FAILED");
}

/* ---- virtio-vsock ---- */
struct vhdr {
	uint64_t src_cid, dst_cid;
	uint32_t src_port, dst_port, len;
	uint16_t type, op;
	uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

#define VS_REQUEST 1
#define VS_RESPONSE 2
#define VS_RST 3
#define VS_SHUTDOWN 4
#define VS_RW 5
#define VS_CREDIT_UPDATE 6
#define VS_CREDIT_REQUEST 7
#define VS_RX_BUF 0x2000
#define A_VS_RX 0x400000    /* receive buffers, VS_RX_BUF each */
#define A_VS_TX 0x600000    /* transmit packets, 0x11000 each (ring of 32) */

static uint64_t guest_cid;
static int vs_ops[8];
static int vs_host_port;
static int vs_tx_slot;

static void vs_post_rx(struct dev *d)
{
	struct queue *q = &d->q[0];
	uint16_t have = q->avail_idx - used_idx(q);
	for (; have < q->size; have++) {
		uint16_t i = q->avail_idx % q->size;
		set_desc(q->desc, i, P(A_VS_RX) + (uint64_t)i * VS_RX_BUF, VS_RX_BUF, F_WRITE, 0);
		push(q, i);
	}
	notify(d, 0);
}

/* Counts the packets the device sent since last time; returns how many. */
static int vs_drain(struct dev *d)
{
	struct queue *q = &d->q[0];
	int n = 0;
	while (q->used_seen != used_idx(q)) {
		uint32_t id = used_id(q, q->used_seen);
		if (id < q->size) {
			struct vhdr *h = V(A_VS_RX + (uint64_t)id * VS_RX_BUF);
			if (h->op < 8)
				vs_ops[h->op]++;
			else
				vs_ops[0]++;
		}
		q->used_seen++;
		n++;
	}
	vs_post_rx(d);
	return n;
}

/* Sends one packet on the transmit queue; `hdr_len` bytes of header in one descriptor,
 * then `payload` bytes in a second (none when 0). */
static void vs_send_raw(struct dev *d, struct vhdr *h, uint32_t hdr_len, uint64_t payload_addr,
			uint32_t payload_len, uint16_t extra_flags)
{
	struct queue *q = &d->q[1];
	uint16_t slot = vs_tx_slot++ % 32;
	uint16_t i = 2 * slot;
	uint64_t off = A_VS_TX + 0x11000ull * slot;
	memcpy(V(off), h, sizeof *h);
	set_desc(q->desc, i, P(off), hdr_len, (payload_len ? F_NEXT : 0) | extra_flags, i + 1);
	if (payload_len)
		set_desc(q->desc, i + 1, payload_addr, payload_len, 0, 0);
	push(q, i);
	notify(d, 1);
}

static void vs_send(struct dev *d, uint16_t op, uint32_t src_port, uint32_t dst_port,
		    uint32_t len, uint32_t payload_len)
{
	struct vhdr h = {guest_cid, 2, src_port, dst_port, len, 1, op, 0, 256 << 10, 0};
	vs_send_raw(d, &h, sizeof h, P(A_DATA), payload_len, 0);
}

/* Waits for the transmit queue to take everything and the device to answer. */
static void vs_settle(struct dev *d, double t)
{
	struct queue *tx = &d->q[1];
	double end = now() + t;
	while (now() < end) {
		vs_drain(d);
		if ((uint16_t)(used_idx(tx) - tx->avail_idx) == 0)
			break;
		usleep(1000);
	}
	usleep(20000);
	vs_drain(d);
	tx->used_seen = used_idx(tx);
}

static int vs_up(struct dev *d)
{
	if (!dev_up(d))
		return 0;
	vs_tx_slot = 0;
	vs_post_rx(d);
	return 1;
}

static void vsock_attacks(struct dev *d)
{
	int before = failures;
	double start = now();
	memset(vs_ops, 0, sizeof vs_ops);
	if (!vs_up(d))
		return;
	/* Packets that are not packets. */
	struct vhdr h = {guest_cid, 2, 1000, 5001, 0, 1, VS_REQUEST, 0, 1 << 18, 0};
	vs_send_raw(d, &h, 10, 0, 0, 0);                        /* short header */
	vs_send_raw(d, &h, 0, 0, 0, 0);                         /* empty */
	h.len = 0xffffffff;
	h.op = VS_RW;
	vs_send_raw(d, &h, sizeof h, P(A_DATA), 100, 0);        /* len lies */
	h.len = 100;
	vs_send_raw(d, &h, sizeof h, ram_end - 50, 100, 0);     /* payload past RAM */
	vs_send_raw(d, &h, sizeof h, CTL_BASE, 100, 0);         /* payload in MMIO */
	vs_send_raw(d, &h, sizeof h, P(A_DATA), 100, F_WRITE);  /* writable header */
	h.len = 0x20000;
	vs_send_raw(d, &h, sizeof h, P(A_BIG), 0x20000, 0);     /* payload above MAX_PKT */
	vs_settle(d, 2.0);
	/* Headers that lie: spoofed CIDs, unknown types and ops, unknown connections. */
	struct vhdr lies[] = {
		{2, 2, 1001, 5001, 0, 1, VS_REQUEST, 0, 1 << 18, 0},
		{guest_cid, 7, 1002, 5001, 0, 1, VS_REQUEST, 0, 1 << 18, 0},
		{guest_cid + 1, 2, 1003, 5001, 0, 1, VS_REQUEST, 0, 1 << 18, 0},
		{~0ull, ~0ull, 1004, 5001, 0, 1, VS_REQUEST, 0, 1 << 18, 0},
		{guest_cid, 2, 1005, 5001, 0, 2, VS_REQUEST, 0, 1 << 18, 0},
		{guest_cid, 2, 1006, 5001, 0, 1, 99, 0, 1 << 18, 0},
		{guest_cid, 2, 1007, 5001, 0, 1, 0, 0, 1 << 18, 0},
		{guest_cid, 2, 1008, 5001, 0, 1, VS_RW, 0, 1 << 18, 0},
		{guest_cid, 2, 1009, 5001, 0, 1, VS_RESPONSE, 0, 1 << 18, 0},
		{guest_cid, 2, 1010, 5001, 0, 1, VS_SHUTDOWN, 0xffffffff, 1 << 18, 0},
		{guest_cid, 2, 1011, 5001, 0, 1, VS_CREDIT_UPDATE, 0, 0xffffffff, 0xffffffff},
		{guest_cid, 2, 1012, 5001, 0, 1, VS_CREDIT_REQUEST, 0, 1 << 18, 0},
		{guest_cid, 2, 1013, 5001, 0, 1, VS_RST, 0, 1 << 18, 0},
		{guest_cid, 2, 1014, 0xffffffff, 0, 1, VS_REQUEST, 0, 1 << 18, 0},
		{guest_cid, 2, 0xffffffff, 5001, 0, 1, VS_REQUEST, 0, 1 << 18, 0},
	};
	for (unsigned i = 0; i < sizeof lies / sizeof *lies; i++) {
		vs_send_raw(d, &lies[i], sizeof lies[i], 0, 0, 0);
		if (i % 8 == 7)
			vs_settle(d, 1.0);
	}
	vs_settle(d, 2.0);
	attacks += 22;
	/* A flood of connection requests to a port nobody listens on: each gets a reset, and
	 * the resets owed are bounded while the receive queue is starved. */
	int rst_before = vs_ops[VS_RST];
	for (int i = 0; i < 3000; i++) {
		vs_send(d, VS_REQUEST, 20000 + i, 5001, 0, 0);
		if (i % 30 == 29)
			vs_settle(d, 0.5);
	}
	vs_settle(d, 2.0);
	say("%s: 3000 requests to a closed port: %d resets", d->kind, vs_ops[VS_RST] - rst_before);
	attacks++;
	if (vs_host_port) {
		/* Connections to a host listener: data past the credit, lying credit, shutdown
		 * flags, a request for an open connection, and a flood past the connection cap. */
		int resp_before = vs_ops[VS_RESPONSE];
		for (int c = 0; c < 300; c++) {
			vs_send(d, VS_REQUEST, 30000 + c, vs_host_port, 0, 0);
			if (c % 30 == 29)
				vs_settle(d, 1.0);
		}
		vs_settle(d, 3.0);
		int responses = vs_ops[VS_RESPONSE] - resp_before;
		memset(V(A_DATA), 'x', 0x10000);
		for (int c = 0; c < 8; c++) {
			/* 1 MiB on each, far past the 256 KiB window, without waiting. */
			for (int k = 0; k < 16; k++) {
				vs_send(d, VS_RW, 30000 + c, vs_host_port, 0x10000, 0x10000);
				if (k % 8 == 7)
					vs_settle(d, 0.5);
			}
			vs_send(d, VS_REQUEST, 30000 + c, vs_host_port, 0, 0);
			struct vhdr cu = {guest_cid, 2, 30000 + c, vs_host_port, 0, 1,
					  VS_CREDIT_UPDATE, 0, 0xffffffff, 0x80000000};
			vs_send_raw(d, &cu, sizeof cu, 0, 0, 0);
			vs_send(d, VS_SHUTDOWN, 30000 + c, vs_host_port, 0, 0);
			vs_settle(d, 0.5);
		}
		vs_settle(d, 2.0);
		attacks += 5;
		say("%s: 300 connections to host port %d: %d accepted; 8 flooded past their credit",
		    d->kind, vs_host_port, responses);
	}
	/* Receive buffers the device cannot use: readable, shorter than a header, past RAM,
	 * 4 GiB long; then a reset with connections open. */
	{
		struct queue *q = &d->q[0];
		dev_up(d);
		vs_tx_slot = 0;
		set_desc(q->desc, 0, P(A_VS_RX), VS_RX_BUF, 0, 0);
		set_desc(q->desc, 1, P(A_VS_RX), 10, F_WRITE, 0);
		set_desc(q->desc, 2, ram_end - 20, VS_RX_BUF, F_WRITE, 0);
		set_desc(q->desc, 3, P(A_BIG), 0xffffffff, F_WRITE, 0);
		set_desc(q->desc, 4, P(A_VS_RX), 0, F_WRITE, 0);
		for (int i = 0; i < 5; i++)
			push(q, i);
		notify(d, 0);
		for (int i = 0; i < 20; i++)
			vs_send(d, VS_REQUEST, 40000 + i, vs_host_port ? vs_host_port : 5001, 0, 0);
		usleep(300000);
		attacks++;
		/* The event queue: buffers of every kind. */
		struct queue *e = &d->q[2];
		set_desc(e->desc, 0, P(A_DATA), 4, F_WRITE, 0);
		set_desc(e->desc, 1, P(A_DATA), 1, F_WRITE, 0);
		set_desc(e->desc, 2, P(A_DATA), 4, 0, 0);
		set_desc(e->desc, 3, ram_end - 2, 4, F_WRITE, 0);
		for (int i = 0; i < 4; i++)
			push(e, i);
		notify(d, 2);
		usleep(100000);
		dev_reset(d);
		attacks++;
	}
	say("%s: packets received by op: response %d, rst %d, rw %d, credit-update %d, "
	    "shutdown %d; %.1f s: %s",
	    d->kind, vs_ops[VS_RESPONSE], vs_ops[VS_RST], vs_ops[VS_RW], vs_ops[VS_CREDIT_UPDATE],
	    vs_ops[VS_SHUTDOWN], now() - start, failures == before ? "ok" : "FAILED");
}

/* After everything: a request to a closed port must get its reset. */
static int vsock_sane(struct dev *d)
{
	memset(vs_ops, 0, sizeof vs_ops);
	if (!vs_up(d))
		return 0;
	vs_send(d, VS_REQUEST, 50000, 5001, 0, 0);
	double end = now() + 3.0;
	while (vs_ops[VS_RST] == 0 && now() < end) {
		vs_drain(d);
		usleep(1000);
	}
	int ok = vs_ops[VS_RST] > 0;
	if (ok && vs_host_port) {
		vs_send(d, VS_REQUEST, 50001, vs_host_port, 0, 0);
		end = now() + 3.0;
		while (vs_ops[VS_RESPONSE] == 0 && now() < end) {
			vs_drain(d);
			usleep(1000);
		}
		ok = vs_ops[VS_RESPONSE] > 0;
	}
	dev_reset(d);
	if (!ok)
		fail("vsock: a plain connection request after the attacks got no answer");
	return ok;
}

/* ---- setup ---- */

static void write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return;
	(void)!write(fd, text, strlen(text));
	close(fd);
}

static void unbind_drivers(void)
{
	const char *dir = "/sys/bus/platform/drivers/virtio-mmio";
	DIR *dp = opendir(dir);
	if (!dp) {
		say("no %s: no driver to unbind", dir);
		return;
	}
	char names[MAX_DEVS][256];
	int n = 0;
	struct dirent *e;
	while ((e = readdir(dp)) && n < MAX_DEVS)
		if (!strncmp(e->d_name, "virtio-mmio.", 12))
			snprintf(names[n++], 256, "%s", e->d_name);
	closedir(dp);
	for (int i = 0; i < n; i++)
		write_file("/sys/bus/platform/drivers/virtio-mmio/unbind", names[i]);
	say("unbound the kernel's driver from %d devices", n);
}

static void parse_cmdline(void)
{
	char buf[4096] = {0};
	int fd = open("/proc/cmdline", O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof buf - 1) <= 0) {
		say("cannot read /proc/cmdline");
		ctl_exit(2);
	}
	close(fd);
	for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
		unsigned long long base;
		int irq;
		if (sscanf(tok, "virtio_mmio.device=4K@%llx:%d", &base, &irq) == 2 &&
		    ndevs < MAX_DEVS) {
			devs[ndevs].n = ndevs;
			devs[ndevs].base = base;
			devs[ndevs].irq = irq;
			ndevs++;
		}
	}
}

static uint64_t find_ram_end(void)
{
	FILE *f = fopen("/proc/iomem", "r");
	uint64_t end = 0;
	char line[256];
	while (f && fgets(line, sizeof line, f)) {
		unsigned long long a, b;
		if (sscanf(line, " %llx-%llx", &a, &b) == 2 && strstr(line, "System RAM") &&
		    b + 1 > end)
			end = b + 1;
	}
	if (f)
		fclose(f);
	return end;
}

int main(int argc, char **argv)
{
	clock_gettime(CLOCK_MONOTONIC, &t0);
	mount("proc", "/proc", "proc", 0, NULL);
	mount("sys", "/sys", "sysfs", 0, NULL);
	mount("dev", "/dev", "devtmpfs", 0, NULL);
	if (argc < 3) {
		say("usage: villain ARENA_ADDR ARENA_SIZE [HOST_VSOCK_PORT]");
		ctl_exit(2);
	}
	arena_phys = strtoull(argv[1], NULL, 0);
	arena_size = strtoull(argv[2], NULL, 0);
	vs_host_port = argc > 3 ? atoi(argv[3]) : 0;
	parse_cmdline();
	ram_end = find_ram_end();
	int fd = open("/dev/mem", O_RDWR | O_SYNC);
	if (fd < 0) {
		say("cannot open /dev/mem: %s", strerror(errno));
		ctl_exit(2);
	}
	mmio_len = (size_t)(ndevs + 2) * WINDOW;
	mmio = mmap(NULL, mmio_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, CTL_BASE);
	if (mmio == MAP_FAILED) {
		mmio = NULL;
		say("cannot map the MMIO windows: %s", strerror(errno));
		ctl_exit(2);
	}
	say("%d virtio-mmio devices, RAM ends at %#llx, arena %#llx+%#llx", ndevs,
	    (unsigned long long)ram_end, (unsigned long long)arena_phys,
	    (unsigned long long)arena_size);
	unbind_drivers();
	/* The arena is RAM the kernel does not use: write-back through a plain descriptor. */
	int afd = open("/dev/mem", O_RDWR);
	arena = mmap(NULL, arena_size, PROT_READ | PROT_WRITE, MAP_SHARED, afd, arena_phys);
	if (arena == MAP_FAILED) {
		say("cannot map the arena: %s (is memmap= on the command line?)", strerror(errno));
		ctl_exit(2);
	}
	memset(arena, 0, arena_size);
	canaries_set();

	for (int i = 0; i < ndevs; i++) {
		struct dev *d = &devs[i];
		d->w = mmio + (d->base - CTL_BASE);
		d->id = rd(d->w, R_DEVICE_ID);
		dev_reset(d);
		wr(d->w, R_DEV_FEAT_SEL, 0);
		d->offered = rd(d->w, R_DEV_FEAT);
		wr(d->w, R_DEV_FEAT_SEL, 1);
		d->offered |= (uint64_t)rd(d->w, R_DEV_FEAT) << 32;
		d->nqueues = 0;
		for (int qi = 0; qi < 4; qi++) {
			wr(d->w, R_QUEUE_SEL, qi);
			d->qmax[qi] = rd(d->w, R_QUEUE_NUM_MAX);
			if (d->qmax[qi] && d->nqueues == qi)
				d->nqueues = qi + 1;
		}
		if (d->nqueues > 3)
			d->nqueues = 3;
		d->kind = d->id == 2 ? "blk" : d->id == 4 ? "rng" : d->id == 19 ? "vsock" : "unknown";
		if (d->id == 19)
			guest_cid = rd(d->w, R_CONFIG) | (uint64_t)rd(d->w, R_CONFIG + 4) << 32;
		say("device %d at %#llx irq %d: %s (id %u), features %#llx, %d queues (max %u)", i,
		    (unsigned long long)d->base, d->irq, d->kind, d->id,
		    (unsigned long long)d->offered, d->nqueues, d->qmax[0]);
	}

	for (int i = 0; i < ndevs; i++) {
		struct dev *d = &devs[i];
		if (!d->nqueues)
			continue;
		say("%s: attacking", d->kind);
		sweep_registers(d);
		status_disorder(d);
		queue_registers(d);
		for (int qi = 0; qi < d->nqueues; qi++)
			chain_attacks(d, qi);
		if (d->id == 2)
			blk_attacks(d);
		else if (d->id == 4)
			rng_attacks(d);
		else if (d->id == 19)
			vsock_attacks(d);
		canaries_check(d->kind);
	}

	/* The control page, read at every width and offset (a write there ends the VM). */
	for (unsigned off = 0; off < WINDOW; off++) {
		(void)*(volatile uint8_t *)(mmio + off);
		(void)*(volatile uint16_t *)(mmio + off);
		(void)*(volatile uint32_t *)(mmio + off);
		(void)*(volatile uint64_t *)(mmio + off);
	}
	attacks++;

	int sane = 0, checked = 0;
	for (int i = 0; i < ndevs; i++) {
		struct dev *d = &devs[i];
		checked++;
		if (d->id == 2)
			sane += blk_sane(d);
		else if (d->id == 4)
			sane += rng_sane(d);
		else if (d->id == 19)
			sane += vsock_sane(d);
		else
			checked--;
	}
	canaries_check("the end");
	say("SUMMARY devices=%d attacks=%d still-working=%d/%d failures=%d time=%.1fs", ndevs,
	    attacks, sane, checked, failures, now());
	ctl_exit(failures ? 1 : 0);
	return 0;
}
