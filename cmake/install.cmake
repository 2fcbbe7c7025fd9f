# What `cmake --install` puts where (GNUInstallDirs; the prefix may also be
# given at install time: cmake --install build --prefix /opt/memvisor):
#   include/memvisor.h
#   lib*/libmemvisor.so.0.1.0, .so.0, .so   the shared library (public API only)
#   lib*/libmemvisor.a                      the static library
#   lib*/pkgconfig/memvisor.pc
#   lib*/cmake/memvisor/                    find_package(memvisor): the targets
#                                           memvisor::memvisor (shared) and
#                                           memvisor::memvisor_static
#   bin/memvisor, sbin/memvisord            the tools (linked statically)
#   share/man/man1/memvisor.1, man8/memvisord.8
# Nothing here carries memvisor's warning or sanitizer flags to a consumer:
# those are directory-scoped compile options, not usage requirements.
include(CMakePackageConfigHelpers)

set(MV_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/memvisor)

install(FILES ${CMAKE_SOURCE_DIR}/include/memvisor.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT devel)
install(TARGETS memvisor memvisor_shared EXPORT memvisorTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT runtime
                NAMELINK_COMPONENT devel
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT devel)
# memvisor-bench beside memvisor: `memvisor bench` runs it from there.
install(TARGETS memvisor-cli memvisor-bench RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        COMPONENT tools)
# The daemon is a system service (man section 8), run by root or a service
# manager: sbin.
install(TARGETS memvisord RUNTIME DESTINATION ${CMAKE_INSTALL_SBINDIR}
        COMPONENT tools)
# The agent VMMs load (LD_PRELOAD) to hand their RAM over, in a directory
# of its own (it is not a library to link); memvisord and memvisor find it
# there (MV_AGENT_INSTALL_PATH).  memvisor-vmctl talks to the test guest.
install(TARGETS memvisor_agent LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}/memvisor
        COMPONENT tools)
install(TARGETS memvisor-vmctl RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        COMPONENT tools)
install(FILES ${CMAKE_SOURCE_DIR}/docs/man/memvisor.1
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man1 COMPONENT tools)
install(FILES ${CMAKE_SOURCE_DIR}/docs/man/memvisord.8
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man8 COMPONENT tools)

# CMake package: memvisorConfig.cmake finds the static library's link
# dependencies and includes the exported targets; relocatable, so it works
# wherever the prefix is.
install(EXPORT memvisorTargets NAMESPACE memvisor:: DESTINATION ${MV_CMAKE_DIR}
        COMPONENT devel)
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/memvisorConfig.cmake.in
                              ${CMAKE_BINARY_DIR}/memvisorConfig.cmake
                              INSTALL_DESTINATION ${MV_CMAKE_DIR})
# One major version is one ABI (the soname's number): a program asking for
# 0.1 may use any 0.x at least 0.1.
write_basic_package_version_file(${CMAKE_BINARY_DIR}/memvisorConfigVersion.cmake
                                 COMPATIBILITY SameMajorVersion)
install(FILES ${CMAKE_BINARY_DIR}/memvisorConfig.cmake
              ${CMAKE_BINARY_DIR}/memvisorConfigVersion.cmake
        DESTINATION ${MV_CMAKE_DIR} COMPONENT devel)

# pkg-config file.  Its prefix is the one of the install, which
# `cmake --install --prefix` may change after configuring: the file is
# written at install time, into a staging directory of its own for each
# prefix (installs to two prefixes may run at once), then installed.
foreach(dir LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${dir}}")
    set(MV_PC_${dir} "${CMAKE_INSTALL_${dir}}")
  else()
    set(MV_PC_${dir} "\${prefix}/${CMAKE_INSTALL_${dir}}")
  endif()
endforeach()
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(MV_PC_DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
else()
  set(MV_PC_DESTINATION "\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/pkgconfig")
endif()
configure_file(${CMAKE_SOURCE_DIR}/cmake/memvisor.pc.in
               ${CMAKE_BINARY_DIR}/memvisor.pc.in @ONLY)
install(CODE "
  file(READ \"${CMAKE_BINARY_DIR}/memvisor.pc.in\" mv_pc)
  string(REPLACE \"%PREFIX%\" \"\${CMAKE_INSTALL_PREFIX}\" mv_pc \"\${mv_pc}\")
  string(MD5 mv_pc_stage \"\${CMAKE_INSTALL_PREFIX}\")
  set(mv_pc_stage \"${CMAKE_BINARY_DIR}/pkgconfig-staging/\${mv_pc_stage}\")
  file(WRITE \"\${mv_pc_stage}/memvisor.pc\" \"\${mv_pc}\")
  file(INSTALL DESTINATION \"${MV_PC_DESTINATION}\" TYPE FILE
       FILES \"\${mv_pc_stage}/memvisor.pc\")
  file(REMOVE_RECURSE \"\${mv_pc_stage}\")"
  COMPONENT devel)
