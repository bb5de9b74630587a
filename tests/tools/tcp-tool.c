/* tcp-tool: the TCP ends the network tests and benchmarks need inside a busybox guest.
 * Built static by the test (or scripts/bench-net) and put in the guest's initramfs.
 *
 *   tcp-tool get IP PORT PATH        HTTP/1.0 GET; the body to stdout. The request side stays
 *                                    open until the answer ends (as curl, wget and apk do):
 *                                    `printf ... | nc` closes it first, which passt before
 *                                    mid-2025 answers by cutting large answers short.
 *                                    Exit 1 on a reset or a short body (Content-Length).
 *   tcp-tool put IP PORT SIZE        send "SIZE\n" and SIZE bytes of stdin, print the answer
 *   tcp-tool echo PORT               echo every connection's bytes back, forever
 *   tcp-tool pingpong IP PORT N      N one-byte round trips on one connection (TCP_NODELAY);
 *                                    print "rtt_us median=M p90=P"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "tcp-tool: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int dial(const char *ip, const char *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
	int one = 1, s;
	if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
		fprintf(stderr, "tcp-tool: bad address %s\n", ip);
		exit(1);
	}
	s = socket(AF_INET, SOCK_STREAM, 0);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0)
		die("connect");
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return s;
}

static void write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			die("write");
		p += w;
		n -= (size_t)w;
	}
}

static int get(const char *ip, const char *port, const char *path)
{
	static char buf[1 << 16];
	char req[1024], *end;
	size_t head = 0;
	long long want = -1, body = 0;
	int s = dial(ip, port), in_head = 1;
	snprintf(req, sizeof(req), "GET /%s HTTP/1.0\r\n\r\n", path);
	write_all(s, req, strlen(req));
	for (;;) {
		ssize_t n = read(s, buf + head, sizeof(buf) - 1 - head);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("read");
		if (n == 0)
			break;
		if (!in_head) {
			write_all(1, buf, (size_t)n);
			body += n;
			continue;
		}
		head += (size_t)n;
		buf[head] = 0;
		end = strstr(buf, "\r\n\r\n");
		if (!end) {
			if (head == sizeof(buf) - 1) {
				fprintf(stderr, "tcp-tool: header too long\n");
				return 1;
			}
			continue;
		}
		*end = 0;
		char *cl = strcasestr(buf, "\r\nContent-Length:");
		if (cl)
			want = atoll(cl + 17);
		in_head = 0;
		end += 4;
		write_all(1, end, (size_t)(buf + head - end));
		body += buf + head - end;
		head = 0;
	}
	if (in_head || (want >= 0 && body != want)) {
		fprintf(stderr, "tcp-tool: body of %lld bytes, expected %lld\n", body, want);
		return 1;
	}
	return 0;
}

static int put(const char *ip, const char *port, const char *size)
{
	static char buf[1 << 16];
	long long left = atoll(size);
	int s = dial(ip, port);
	snprintf(buf, sizeof(buf), "%lld\n", left);
	write_all(s, buf, strlen(buf));
	while (left > 0) {
		ssize_t n = read(0, buf, left < (long long)sizeof(buf) ? (size_t)left : sizeof(buf));
		if (n <= 0)
			die("read stdin");
		write_all(s, buf, (size_t)n);
		left -= n;
	}
	for (;;) {
		ssize_t n = read(s, buf, sizeof(buf));
		if (n < 0)
			die("read");
		if (n == 0)
			return 0;
		write_all(1, buf, (size_t)n);
	}
}

static int echo(const char *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
	int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
	signal(SIGCHLD, SIG_IGN);
	setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 16) < 0)
		die("listen");
	for (;;) {
		int c = accept(l, NULL, NULL);
		if (c < 0)
			continue;
		if (fork() == 0) {
			static char buf[1 << 16];
			ssize_t n;
			setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
			while ((n = read(c, buf, sizeof(buf))) > 0)
				write_all(c, buf, (size_t)n);
			_exit(0);
		}
		close(c);
	}
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static int pingpong(const char *ip, const char *port, const char *count)
{
	int n = atoi(count), s = dial(ip, port), i;
	double *rtt = calloc((size_t)n, sizeof(double));
	if (n < 1 || !rtt)
		return 1;
	for (i = 0; i < n; i++) {
		struct timeval t0, t1;
		char c = 'x';
		gettimeofday(&t0, NULL);
		write_all(s, &c, 1);
		if (read(s, &c, 1) != 1)
			die("read");
		gettimeofday(&t1, NULL);
		rtt[i] = (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_usec - t0.tv_usec);
	}
	qsort(rtt, (size_t)n, sizeof(double), cmp);
	printf("rtt_us median=%.0f p90=%.0f\n", rtt[n / 2], rtt[n * 9 / 10]);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "get"))
		return get(argv[2], argv[3], argv[4]);
	if (argc == 5 && !strcmp(argv[1], "put"))
		return put(argv[2], argv[3], argv[4]);
	if (argc == 3 && !strcmp(argv[1], "echo"))
		return echo(argv[2]);
	if (argc == 5 && !strcmp(argv[1], "pingpong"))
		return pingpong(argv[2], argv[3], argv[4]);
	fprintf(stderr, "usage: tcp-tool get IP PORT PATH | put IP PORT SIZE | echo PORT | "
			"pingpong IP PORT N\n");
	return 2;
}
