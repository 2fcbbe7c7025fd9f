/*
 * version.c - the version of the library actually loaded, for programs that
 * link libmemvisor.so and want to know which one the dynamic linker found
 * (MV_VERSION_* in memvisor.h are the version of the header they were built
 * with).
 */
#include "memvisor.h"

#define MV_STR_(x) #x
#define MV_STR(x) MV_STR_(x)

const char *mv_version(void)
{
    return MV_STR(MV_VERSION_MAJOR) "." MV_STR(MV_VERSION_MINOR) "."
           MV_STR(MV_VERSION_PATCH);
}

int mv_version_number(void)
{
    return MV_VERSION_NUMBER;
}
