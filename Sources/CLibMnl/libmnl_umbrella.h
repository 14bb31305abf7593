#include <libmnl/libmnl.h>
#include <linux/rtnetlink.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>

/* What TandemCloud's L2 provider needs beyond libmnl: an interface's hardware address and flags
 * (SIOCGIFHWADDR / SIOCGIFFLAGS, whose ifreq unions and variadic ioctl Swift cannot call cleanly)
 * and a send-only AF_PACKET socket for gratuitous ARP. Every function returns 0 (or a descriptor)
 * on success and -errno on failure; none keeps state. */
#include <errno.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <netpacket/packet.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define TDM_ETH_P_ARP 0x0806
#define TDM_ARPHRD_ETHER 1

static inline int tdm_ifreq_ioctl(const char *name, unsigned long request, struct ifreq *ifr) {
    size_t len = strlen(name);
    if (len == 0 || len >= IFNAMSIZ) return -EINVAL;
    memset(ifr, 0, sizeof(*ifr));
    memcpy(ifr->ifr_name, name, len);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int rc = ioctl(fd, request, ifr);
    int saved = errno;
    close(fd);
    return rc < 0 ? -saved : 0;
}

/* The interface's hardware type (ARPHRD_*) and address (up to 6 bytes copied into mac). */
static inline int tdm_if_hwaddr(const char *name, unsigned char mac[6], unsigned short *hwtype) {
    struct ifreq ifr;
    int rc = tdm_ifreq_ioctl(name, SIOCGIFHWADDR, &ifr);
    if (rc < 0) return rc;
    *hwtype = ifr.ifr_hwaddr.sa_family;
    memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
    return 0;
}

/* The interface's IFF_* flags (IFF_UP, IFF_RUNNING, ...). */
static inline int tdm_if_flags(const char *name, unsigned int *flags) {
    struct ifreq ifr;
    int rc = tdm_ifreq_ioctl(name, SIOCGIFFLAGS, &ifr);
    if (rc < 0) return rc;
    *flags = (unsigned short)ifr.ifr_flags;
    return 0;
}

static inline unsigned int tdm_iff_up(void) { return IFF_UP; }
static inline unsigned int tdm_iff_running(void) { return IFF_RUNNING; }

/* A raw packet socket bound to one interface, protocol 0: it sends and never receives, so no
 * queue of unread frames builds up. Needs CAP_NET_RAW. */
static inline int tdm_packet_open(int ifindex) {
    int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = ifindex;
    if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0) {
        int saved = errno;
        close(fd);
        return -saved;
    }
    return fd;
}

/* Sends one complete Ethernet frame (header included) carrying ARP out of the interface. */
static inline int tdm_packet_send_arp(int fd, int ifindex, const void *frame, size_t len) {
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof(sll));
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = ifindex;
    sll.sll_protocol = htons(TDM_ETH_P_ARP);
    sll.sll_halen = 6;
    memset(sll.sll_addr, 0xff, 6);
    ssize_t n = sendto(fd, frame, len, 0, (struct sockaddr *)&sll, sizeof(sll));
    if (n < 0) return -errno;
    return (size_t)n == len ? 0 : -EMSGSIZE;
}
