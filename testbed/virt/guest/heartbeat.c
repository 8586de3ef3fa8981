/*
 * heartbeat: the testbed guest's workload, started by /init.
 *
 * Why C and not a shell loop: guests run under TCG on some lab hosts, where a
 * busybox loop is too slow and too jittery to hold a 25 Hz tick or to dirty
 * tens of MiB/s.
 *
 * What it does, with parameters read from /proc/cmdline:
 *   tb.fill=<MiB>    fill that much anonymous memory with pseudo-random data
 *                    (not zero pages, not compressible), spread evenly over the
 *                    guest's free RAM (see main), then print
 *                    "TESTBED-FILLED <MiB>" and "TESTBED-GUEST-READY" on ttyS0;
 *   tb.dirty=<MiB/s> rewrite that much of it per second, a slice every tick;
 *   tb.hz=<Hz>       tick rate. Every tick: redraw the VGA text screen
 *                    (/dev/vcsa1) with the sequence number in big digits and as a barcode, and
 *                    print "HB <seq> <monotonic_ms>" on ttyS0.
 *
 * The barcode (BAR_* below; decoded by testbed/spice/barcode.py, keep the two in
 * step) lets a sampler of the client's screen read which frame it shows: rows
 * BAR_ROW0.. of the screen hold BAR_SLOTS slots of BAR_COLS columns each, a slot
 * light grey for 1 and black for 0: a 1 (start), BAR_DATA bits of seq (most
 * significant first), BAR_CHECK bits of seq % BAR_MOD, a 1 (end).
 *
 * Serial writes are non-blocking: when nobody drains the serial port a line is
 * dropped rather than stalling the tick (and with it the display).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)
#define PAGE 4096UL

static int serial_fd = -1;
static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

/* xorshift64*: cheap, and its output does not compress. */
static inline uint64_t rng_next(void)
{
	uint64_t x = rng_state;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545F4914F6CDD1DULL;
}

static void say(const char *fmt, ...)
{
	char line[160];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n <= 0 || serial_fd < 0)
		return;
	if (n >= (int)sizeof(line))
		n = sizeof(line) - 1;
	if (write(serial_fd, line, n) < 0 && errno != EAGAIN)
		serial_fd = -1;
}

struct params {
	long fill_mib;
	double dirty_mib_s;
	long hz;
};

static void parse_cmdline(struct params *p)
{
	char buf[4096];
	int fd = open("/proc/cmdline", O_RDONLY);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
		if (!strncmp(tok, "tb.fill=", 8))
			p->fill_mib = strtol(tok + 8, NULL, 10);
		else if (!strncmp(tok, "tb.dirty=", 9))
			p->dirty_mib_s = strtod(tok + 9, NULL);
		else if (!strncmp(tok, "tb.hz=", 6))
			p->hz = strtol(tok + 6, NULL, 10);
	}
	if (p->fill_mib < 0)
		p->fill_mib = 0;
	if (p->dirty_mib_s < 0)
		p->dirty_mib_s = 0;
	if (p->hz < 1)
		p->hz = 1;
	if (p->hz > 1000)
		p->hz = 1000;
}

/* Pages to spread `pages` over: MemFree less a margin for the guest's own use (it
 * runs nothing else), never less than `pages` (then no spreading). */
static size_t spread_pages(size_t pages)
{
	FILE *f = fopen("/proc/meminfo", "r");
	unsigned long kb = 0;
	char line[128];
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "MemFree: %lu kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	size_t margin = 16 * MIB / PAGE, avail = kb * 1024 / PAGE;
	size_t span = avail > margin ? avail - margin : 0;
	return span > pages ? span : pages;
}

/* Where page j of `pages` fill pages lies in a span of `span` pages: evenly spaced. */
static size_t kept(size_t j, size_t pages, size_t span)
{
	return (size_t)((uint64_t)j * span / pages);
}

static void fill_random(uint64_t *words, size_t count)
{
	for (size_t i = 0; i < count; i++)
		words[i] = rng_next();
}

/* ---- VGA text screen ---------------------------------------------------- */

struct screen {
	int fd;
	int rows, cols;
	uint16_t *cells; /* char | attr << 8, as in /dev/vcsa */
};

/* 3x5 digit glyphs, one row per byte, bit 2 = left column. */
static const unsigned char DIGITS[10][5] = {
	{7, 5, 5, 5, 7}, {2, 6, 2, 2, 7}, {7, 1, 7, 4, 7}, {7, 1, 7, 1, 7},
	{5, 5, 7, 1, 1}, {7, 4, 7, 1, 7}, {7, 4, 7, 5, 7}, {7, 1, 1, 1, 1},
	{7, 5, 7, 5, 7}, {7, 5, 7, 1, 7},
};

/* One background colour: only the digits and the barcode change per tick, so an update
 * is a few small rectangles, not the whole screen (over a slow display link a
 * full-screen repaint at 25 Hz outruns SPICE's flow control and the lag piles up). */
#define BACKGROUND 1 /* blue */
#define BIG_EVERY 25 /* the big digits change once a second: few changed pixels per frame */

static void screen_open(struct screen *s)
{
	unsigned char hdr[4];
	s->fd = open("/dev/vcsa1", O_RDWR);
	if (s->fd < 0 || pread(s->fd, hdr, 4, 0) != 4) {
		say("TESTBED-WARN no VGA text console (/dev/vcsa1): %s\n", strerror(errno));
		s->fd = -1;
		return;
	}
	s->rows = hdr[0];
	s->cols = hdr[1];
	s->cells = calloc((size_t)s->rows * s->cols, sizeof(uint16_t));
	int tty = open("/dev/tty1", O_WRONLY | O_NOCTTY);
	if (tty >= 0) { /* hide the cursor so only our frame changes */
		if (write(tty, "\033[?25l\033[2J", 10) < 0)
			say("TESTBED-WARN cannot hide VGA cursor\n");
		close(tty);
	}
}

static void put_text(struct screen *s, int row, int col, const char *text, unsigned char attr)
{
	for (; *text && col < s->cols; text++, col++)
		if (row >= 0 && row < s->rows && col >= 0)
			s->cells[row * s->cols + col] = (unsigned char)*text | attr << 8;
}

static void put_big_number(struct screen *s, int row, unsigned long seq, unsigned char attr)
{
	char digits[24];
	int len = snprintf(digits, sizeof(digits), "%lu", seq);
	int width = len * 8 - 2; /* each glyph 6 cells wide (3 x 2) plus 2 gap */
	int col0 = (s->cols - width) / 2;
	for (int d = 0; d < len; d++)
		for (int y = 0; y < 5; y++)
			for (int x = 0; x < 3; x++) {
				if (!(DIGITS[digits[d] - '0'][y] >> (2 - x) & 1))
					continue;
				for (int dx = 0; dx < 2; dx++) {
					int r = row + y, c = col0 + d * 8 + x * 2 + dx;
					if (r < s->rows && c >= 0 && c < s->cols)
						s->cells[r * s->cols + c] = 0xDB | attr << 8;
				}
			}
}

/* The barcode: 1, seq bits, check bits, 1; see the header comment. */
#define BAR_ROW0 12
#define BAR_ROWS 1
#define BAR_COLS 3
#define BAR_DATA 18
#define BAR_CHECK 6
#define BAR_MOD 61
#define BAR_SLOTS (1 + BAR_DATA + BAR_CHECK + 1)

static void put_barcode(struct screen *s, unsigned long seq)
{
	int bits[BAR_SLOTS], n = 0;
	unsigned long data = seq & ((1UL << BAR_DATA) - 1), check = data % BAR_MOD;
	bits[n++] = 1;
	for (int i = BAR_DATA - 1; i >= 0; i--)
		bits[n++] = data >> i & 1;
	for (int i = BAR_CHECK - 1; i >= 0; i--)
		bits[n++] = check >> i & 1;
	bits[n++] = 1;
	int col0 = (s->cols - BAR_SLOTS * BAR_COLS) / 2;
	for (int r = BAR_ROW0; r < BAR_ROW0 + BAR_ROWS && r < s->rows; r++) {
		for (int c = 0; c < s->cols; c++)
			s->cells[r * s->cols + c] = ' '; /* black on black */
		for (int i = 0; i < BAR_SLOTS; i++)
			for (int c = 0; c < BAR_COLS; c++)
				s->cells[r * s->cols + col0 + i * BAR_COLS + c] =
					' ' | (bits[i] ? 0x7F : 0x00) << 8;
	}
}

/* One frame: the seq in text and as a barcode, big digits (once a second), a legend. */
static void screen_draw(struct screen *s, unsigned long seq, const struct params *p)
{
	if (s->fd < 0)
		return;
	unsigned char bg = BACKGROUND;
	unsigned char attr = bg << 4 | 0xF;
	for (int i = 0; i < s->rows * s->cols; i++)
		s->cells[i] = ' ' | attr << 8;
	char line[96];
	snprintf(line, sizeof(line), "TESTBED HEARTBEAT  seq %lu", seq);
	put_text(s, 1, 2, line, attr);
	put_big_number(s, 3, seq - seq % BIG_EVERY, attr);
	put_barcode(s, seq);
	snprintf(line, sizeof(line), "fill %ld MiB  dirty %g MiB/s  %ld Hz", p->fill_mib,
		 p->dirty_mib_s, p->hz);
	put_text(s, s->rows - 2, 2, line, attr);
	size_t bytes = (size_t)s->rows * s->cols * 2;
	if (pwrite(s->fd, s->cells, bytes, 4) != (ssize_t)bytes) {
		say("TESTBED-WARN VGA write failed: %s\n", strerror(errno));
		s->fd = -1;
	}
}

/* ---- main loop ---------------------------------------------------------- */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

int main(void)
{
	struct params p = {64, 0.0, 25};
	serial_fd = open("/dev/ttyS0", O_WRONLY | O_NOCTTY | O_NONBLOCK);
	parse_cmdline(&p);
	rng_state ^= now_ns();
	say("TESTBED-CONFIG fill=%ld dirty=%g hz=%ld\n", p.fill_mib, p.dirty_mib_s, p.hz);

	size_t bytes = (size_t)p.fill_mib * MIB;
	size_t pages = bytes / PAGE, span = pages;
	uint64_t *mem = NULL;
	if (bytes) {
		/* Spread the fill over the guest's free RAM: fault a span of pages in order
		 * (consecutive faults get neighbouring physical pages), fill evenly spaced ones
		 * with random data and hand the others back still zero. The migration then
		 * meets data evenly from the first guest page to the last, so its progress
		 * (the share of RAM scanned; zero pages scan at once) climbs steadily to the
		 * end of the first pass and "at N %" means N % of the copy. */
		span = spread_pages(pages);
		mem = mmap(NULL, span * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			   -1, 0);
		if (mem == MAP_FAILED) {
			say("TESTBED-GUEST-ERROR cannot map %ld MiB: %s\n", p.fill_mib, strerror(errno));
			return 1;
		}
		for (size_t i = 0, j = 0; i < span; i++) { /* page j of the fill is page kept(j) */
			uint64_t *page = mem + i * (PAGE / 8);
			if (j < pages && i == kept(j, pages, span)) {
				fill_random(page, PAGE / 8);
				j++;
			} else {
				*(volatile uint64_t *)page = 0; /* faulted in, left zero */
			}
		}
		for (size_t j = 0; j < pages; j++) { /* the zero pages between go back */
			size_t from = kept(j, pages, span) + 1;
			size_t to = j + 1 < pages ? kept(j + 1, pages, span) : span;
			if (to > from)
				madvise((char *)mem + from * PAGE, (to - from) * PAGE, MADV_DONTNEED);
		}
	}
	say("TESTBED-FILLED %ld (spread over %zu MiB)\n", p.fill_mib, span * PAGE / MIB);

	struct screen scr = {.fd = -1};
	screen_open(&scr);
	say("TESTBED-GUEST-READY\n");

	size_t cursor = 0;
	double dirty_pages_per_tick = p.dirty_mib_s * MIB / PAGE / p.hz, owed = 0;
	uint64_t period = 1000000000ULL / p.hz, next = now_ns();
	for (unsigned long seq = 1;; seq++) {
		screen_draw(&scr, seq, &p);
		say("HB %lu %llu\n", seq, (unsigned long long)(now_ns() / 1000000ULL));
		if (pages) {
			owed += dirty_pages_per_tick;
			for (; owed >= 1; owed -= 1, cursor = (cursor + 1) % pages)
				fill_random(mem + kept(cursor, pages, span) * (PAGE / 8), PAGE / 8);
		}
		next += period;
		uint64_t now = now_ns();
		if (next < now) /* fell behind (e.g. VM paused): do not burst to catch up */
			next = now;
		struct timespec ts = {next / 1000000000ULL, next % 1000000000ULL};
		while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
			;
	}
}
