/* udp-tool: the UDP ends the network tests need inside a container, whose busybox has no
 * UDP client or server. Built static by the test and copied into the container.
 *
 *   udp-tool echo PORT               answer every datagram with itself, forever
 *   udp-tool ask IP PORT MESSAGE     send MESSAGE, print the answer (5 s timeout: exit 2)
 *   udp-tool flood IP PORT MBYTES    send MBYTES MiB in 1400-byte datagrams as fast as the
 *                                    stack takes them; print what was sent
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
	fprintf(stderr, "usage: udp-tool echo PORT | ask IP PORT MSG | flood IP PORT MBYTES\n");
	return 1;
}
