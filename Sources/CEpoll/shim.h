// Linux's readiness and wake-up calls, which Swift's Glibc module leaves out, for the app plane's relay loops.
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

static const uint32_t ringside_epollin = EPOLLIN;
static const uint32_t ringside_epollout = EPOLLOUT;
static const uint32_t ringside_epollrdhup = EPOLLRDHUP;
static const uint32_t ringside_epollhup = EPOLLHUP;
static const uint32_t ringside_epollerr = EPOLLERR;
static const uint32_t ringside_epollet = EPOLLET;
static const uint32_t ringside_epollexclusive = EPOLLEXCLUSIVE;

// accept4 is declared only under _GNU_SOURCE, which would change how <sys/socket.h> reads for the whole module.
extern int accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);

/// Accepts a connection as a non-blocking, close-on-exec socket.
static inline int ringside_accept(int fd, struct sockaddr *address, socklen_t *length) {
    return accept4(fd, address, length, SOCK_NONBLOCK | SOCK_CLOEXEC);
}
