/* moekit core: read-only file mappings (see mapfile.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/mapfile.h"

static const char k_empty[1];

moe_status moe_map_file(const char *path, const void **base, size_t *size, char *err, size_t errlen) {
    *base = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        if (err) snprintf(err, errlen, "cannot open '%s': %s", path, strerror(errno));
        return MOE_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        if (err) snprintf(err, errlen, "'%s' is not a regular file", path);
        close(fd);
        return MOE_ERR_IO;
    }
    size_t n = (size_t)sb.st_size;
    if (n) {
        void *p = mmap(NULL, n, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            if (err) snprintf(err, errlen, "cannot mmap '%s': %s", path, strerror(errno));
            close(fd);
            return MOE_ERR_IO;
        }
        *base = p;
    } else {
        *base = k_empty;
    }
    close(fd);
    *size = n;
    return MOE_OK;
}

void moe_unmap_file(const void *base, size_t size) {
    if (base && size && base != (const void *)k_empty) munmap((void *)base, size);
}
