/* net-tool: the network ends the tests need inside a container, whose busybox has no UDP
 * client or server and whose httpd listens with a backlog of 9 (a burst of connections
 * beyond that waits on SYN retransmissions, which is the server's limit, not hk's). Built
 * static by the test and copied into the container.
 *
 *   net-tool echo PORT               answer every UDP datagram with itself, forever
 *   net-tool ask IP PORT MESSAGE     send MESSAGE over UDP, print the answer (5 s timeout:
 *                                    exit 2)
 *   net-tool flood IP PORT MBYTES    send MBYTES MiB in 1400-byte datagrams as fast as the
 *                                    stack takes them; print what was sent
 *   net-tool serve PORT TEXT         a TCP server with a backlog of 1024: read a request,
 *                                    answer "HTTP/1.0 200 OK" and TEXT, close; forever
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static struct sockaddr_in addr(const char *ip, const char *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(port))};
	if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
		fprintf(stderr, "udp-tool: bad address %s\n", ip);
		exit(1);
	}
	return a;
}

int main(int argc, char **argv)
{
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	char buf[65536];
	if (s < 0) {
		perror("socket");
		return 1;
	}
	if (argc == 3 && !strcmp(argv[1], "echo")) {
		struct sockaddr_in me = addr("0.0.0.0", argv[2]), peer;
		if (bind(s, (struct sockaddr *)&me, sizeof me) < 0) {
			perror("bind");
			return 1;
		}
		for (;;) {
			socklen_t len = sizeof peer;
			ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
			if (n >= 0)
				sendto(s, buf, n, 0, (struct sockaddr *)&peer, len);
		}
	}
	if (argc == 5 && !strcmp(argv[1], "ask")) {
		struct sockaddr_in to = addr(argv[2], argv[3]);
		struct timeval tv = {.tv_sec = 5};
		setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		if (sendto(s, argv[4], strlen(argv[4]), 0, (struct sockaddr *)&to, sizeof to) < 0) {
			perror("sendto");
			return 1;
		}
		ssize_t n = recv(s, buf, sizeof buf - 1, 0);
		if (n < 0) {
			perror("recv");
			return 2;
		}
		buf[n] = 0;
		printf("%s\n", buf);
		return 0;
	}
	if (argc == 5 && !strcmp(argv[1], "flood")) {
		struct sockaddr_in to = addr(argv[2], argv[3]);
		long long want = atoll(argv[4]) << 20, sent = 0;
		memset(buf, 'x', 1400);
		while (sent < want) {
			ssize_t n = sendto(s, buf, 1400, 0, (struct sockaddr *)&to, sizeof to);
			if (n < 0 && errno != ENOBUFS && errno != EAGAIN && errno != ECONNREFUSED) {
				perror("sendto");
				return 1;
			}
			if (n > 0)
				sent += n;
		}
		printf("sent %lld\n", sent);
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "serve")) {
		int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in me = addr("0.0.0.0", argv[2]);
		setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(l, (struct sockaddr *)&me, sizeof me) < 0 || listen(l, 1024) < 0) {
			perror("bind/listen");
			return 1;
		}
		int n = snprintf(buf, sizeof buf, "HTTP/1.0 200 OK\r\nContent-Length: %zu\r\n\r\n%s\n",
				 strlen(argv[3]) + 1, argv[3]);
		for (;;) {
			char req[4096];
			int c = accept(l, NULL, NULL);
			if (c < 0)
				continue;
			struct timeval tv = {.tv_sec = 5};
			setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
			/* The request's first segment is enough: the answer does not depend on it. */
			if (read(c, req, sizeof req) > 0)
				write(c, buf, n);
			close(c);
		}
	}
	fprintf(stderr, "usage: net-tool echo PORT | ask IP PORT MSG | flood IP PORT MBYTES | serve PORT TEXT\n");
	return 1;
}
