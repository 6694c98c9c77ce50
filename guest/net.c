/*
 * The guest's network: one virtio-net NIC (eth0), configured from the kernel command line
 * (`cell.net=ADDRESS/PREFIX,GATEWAY[,RESOLVER]`) before anything runs. Every VM gets the same
 * address: it lives in a network namespace of its own on the host, which translates it
 * (docs/networking.md), so a fork needs no change here. The resolver is the gateway unless named:
 * QEMU's user-mode networking (a celld without root) answers DNS on an address of its own.
 */
#include "agent.h"
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#define NIC "eth0"
#define NIC_WAIT_MS 5000

static bool set_addr(int s, unsigned long req, const char *what, struct in_addr a)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	memcpy(ifr.ifr_name, NIC, sizeof NIC);
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
	sin->sin_family = AF_INET;
	sin->sin_addr = a;
	if (ioctl(s, req, &ifr) == 0) return true;
	warnx("%s %s: %s", NIC, what, strerror(errno));
	return false;
}

static void write_resolv_conf(const char *resolver)
{
	char text[64];
	int n = snprintf(text, sizeof text, "nameserver %s\n", resolver);
	/* The image's may be a symlink into a resolver's runtime folder: replace it, never follow it. */
	unlink("/etc/resolv.conf");
	int fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0 || write(fd, text, (size_t)n) != n) warnx("/etc/resolv.conf: %s", strerror(errno));
	if (fd >= 0) close(fd);
}

/* `spec` is "A.B.C.D/PREFIX,GATEWAY[,RESOLVER]"; a malformed one is a console warning and no network. */
void network_up(const char *spec)
{
	char copy[64], *slash, *comma, *resolver;
	snprintf(copy, sizeof copy, "%s", spec);
	struct in_addr addr, gw, mask, dns;
	if (!(slash = strchr(copy, '/')) || !(comma = strchr(slash, ','))) {
		warnx("cell.net=%s: expected ADDRESS/PREFIX,GATEWAY[,RESOLVER]", spec);
		return;
	}
	*slash = *comma = '\0';
	if ((resolver = strchr(comma + 1, ','))) *resolver++ = '\0';
	else resolver = comma + 1;
	int prefix = atoi(slash + 1);
	if (prefix < 1 || prefix > 32 || inet_pton(AF_INET, copy, &addr) != 1 || inet_pton(AF_INET, comma + 1, &gw) != 1 ||
	    inet_pton(AF_INET, resolver, &dns) != 1) {
		warnx("cell.net=%s: expected ADDRESS/PREFIX,GATEWAY[,RESOLVER]", spec);
		return;
	}
	mask.s_addr = htonl(prefix == 32 ? 0xffffffffu : ~(0xffffffffu >> prefix));

	/* virtio-mmio devices probe asynchronously: the NIC may appear a moment after the modules load. */
	struct stat st;
	int64_t deadline = mono_ms() + NIC_WAIT_MS;
	while (stat("/sys/class/net/" NIC, &st) != 0) {
		if (mono_ms() >= deadline) {
			warnx("no %s within %d ms: no network", NIC, NIC_WAIT_MS);
			return;
		}
		usleep(5000);
	}
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		warnx("socket: %s", strerror(errno));
		return;
	}
	if (set_addr(s, SIOCSIFADDR, "address", addr) && set_addr(s, SIOCSIFNETMASK, "netmask", mask)) {
		struct ifreq ifr;
		memset(&ifr, 0, sizeof ifr);
		memcpy(ifr.ifr_name, NIC, sizeof NIC);
		if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
			ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
			if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) warnx("%s up: %s", NIC, strerror(errno));
		}
		struct rtentry rt;
		memset(&rt, 0, sizeof rt);
		((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
		((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
		((struct sockaddr_in *)&rt.rt_gateway)->sin_family = AF_INET;
		((struct sockaddr_in *)&rt.rt_gateway)->sin_addr = gw;
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		if (ioctl(s, SIOCADDRT, &rt) != 0 && errno != EEXIST) warnx("default route via %s: %s", comma + 1, strerror(errno));
		write_resolv_conf(resolver);
		debugx("%s is %s/%d via %s", NIC, copy, prefix, comma + 1);
	}
	close(s);
}
