# libkvtier.so: the client library (public header kvtier.h), with a SONAME and a version
# script; only kvt_* symbols are exported.
add_library(kvtier SHARED ${CMAKE_CURRENT_SOURCE_DIR}/kvtier.c ${CMAKE_CURRENT_SOURCE_DIR}/kvtier_conn.c
	${CMAKE_CURRENT_SOURCE_DIR}/kvtier_batch.c)
# kvtier.h includes proto/kvt_abi.h, installed beside it.
target_include_directories(kvtier PUBLIC
	$<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}>
	$<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/proto>
	$<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_compile_definitions(kvtier PRIVATE KVT_BUILDING_LIB _GNU_SOURCE)
target_compile_options(kvtier PRIVATE -fvisibility=hidden)
target_link_libraries(kvtier PRIVATE $<BUILD_INTERFACE:kvt_proto> Threads::Threads)
# The compressed host tier: puts encode and gets decode in the caller's process with the
# chain the daemon names (codecs/); the codecs' own symbols stay inside the library.
target_link_libraries(kvtier PRIVATE $<BUILD_INTERFACE:kvt_codecs>)
target_link_options(kvtier PRIVATE -Wl,--exclude-libs,libkvt_codecs.a)
# The predictor's API (kvtier_predict.h) is part of the library: compiled in, not linked
# from the static archive, so that its symbols are there even though kvtier.c calls none.
if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/predict.c)
	target_sources(kvtier PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/predict.c
		${CMAKE_CURRENT_SOURCE_DIR}/predict_score.c ${CMAKE_CURRENT_SOURCE_DIR}/predict_sched.c)
	target_link_libraries(kvtier PRIVATE m)
endif()
target_link_options(kvtier PRIVATE -Wl,--version-script=${CMAKE_CURRENT_SOURCE_DIR}/kvtier.map)
# Every symbol resolved at link time, except in a clang fuzzing build: there the sanitizer
# runtime comes with the executable, not with the library.
if(NOT (KVT_FUZZ AND CMAKE_C_COMPILER_ID MATCHES "Clang"))
	target_link_options(kvtier PRIVATE -Wl,--no-undefined)
endif()
set_target_properties(kvtier PROPERTIES VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR}
	LINK_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/kvtier.map
	PUBLIC_HEADER "${CMAKE_CURRENT_SOURCE_DIR}/kvtier.h;${CMAKE_CURRENT_SOURCE_DIR}/kvtier_predict.h;${PROJECT_SOURCE_DIR}/proto/kvt_abi.h")

# kvtierctl: the admin CLI.
add_executable(kvtierctl ${CMAKE_CURRENT_SOURCE_DIR}/kvtierctl.c)
target_link_libraries(kvtierctl PRIVATE kvt_proto)
target_compile_definitions(kvtierctl PRIVATE _GNU_SOURCE)

include(CMakePackageConfigHelpers)
configure_package_config_file(${CMAKE_CURRENT_SOURCE_DIR}/kvtierConfig.cmake.in
	${CMAKE_CURRENT_BINARY_DIR}/kvtierConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvtier)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/kvtierConfigVersion.cmake
	VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(TARGETS kvtier EXPORT kvtierTargets
	LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
	PUBLIC_HEADER DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS kvtierctl RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(EXPORT kvtierTargets NAMESPACE kvtier:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvtier)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/kvtierConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/kvtierConfigVersion.cmake
	DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/kvtier)
# kvtier.pc is written when installing, from the prefix given then (cmake --install
# --prefix P): its libdir and includedir are where the files really went.
install(CODE "
	set(KVT_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
	set(KVT_PC_LIBDIR \"${CMAKE_INSTALL_LIBDIR}\")
	set(KVT_PC_INCLUDEDIR \"${CMAKE_INSTALL_INCLUDEDIR}\")
	foreach(_d LIBDIR INCLUDEDIR)
		if(NOT IS_ABSOLUTE \"\${KVT_PC_\${_d}}\")
			set(KVT_PC_\${_d} \"\\\${prefix}/\${KVT_PC_\${_d}}\")
		endif()
	endforeach()
	set(PROJECT_VERSION \"${PROJECT_VERSION}\")
	configure_file(\"${CMAKE_CURRENT_SOURCE_DIR}/kvtier.pc.in\"
		\"${CMAKE_CURRENT_BINARY_DIR}/kvtier.pc\" @ONLY)
	if(IS_ABSOLUTE \"${CMAKE_INSTALL_LIBDIR}\")
		set(_kvt_pcdir \"${CMAKE_INSTALL_LIBDIR}/pkgconfig\")
	else()
		set(_kvt_pcdir \"\${CMAKE_INSTALL_PREFIX}/${CMAKE_INSTALL_LIBDIR}/pkgconfig\")
	endif()
	file(INSTALL \"${CMAKE_CURRENT_BINARY_DIR}/kvtier.pc\" DESTINATION \"\${_kvt_pcdir}\")")

# The Python package (client/python/kvtier) goes where the system python3 looks for packages
# under the install prefix: Debian's lib/python3/dist-packages for /usr,
# lib/python3.X/dist-packages for /usr/local, else the interpreter's posix_prefix scheme
# (lib/python3.X/site-packages: put that on PYTHONPATH).  KVT_PYTHON_DIR overrides it.
set(KVT_PYTHON_DIR "" CACHE STRING "where cmake --install puts the kvtier Python package (relative: under the prefix)")
set(_kvt_pydir "${KVT_PYTHON_DIR}")
if(NOT _kvt_pydir)
	find_program(_kvt_python3 NAMES python3 PATHS /usr/bin NO_DEFAULT_PATH)
	if(NOT _kvt_python3)
		find_program(_kvt_python3 NAMES python3)
	endif()
	if(_kvt_python3)
		execute_process(COMMAND ${_kvt_python3} -c [=[
import os, sys, sysconfig
p = os.path.abspath(sys.argv[1])
for d in filter(None, sys.path):
    r = os.path.relpath(d, p)
    if r.startswith("lib" + os.sep) and r.endswith("-packages"):
        print(r)
        break
else:
    print(os.path.relpath(sysconfig.get_path("purelib", "posix_prefix",
                                             vars={"base": p, "platbase": p}), p))
]=] ${CMAKE_INSTALL_PREFIX}
			OUTPUT_VARIABLE _kvt_pydir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
	endif()
	if(NOT _kvt_pydir)
		set(_kvt_pydir lib/python3/dist-packages)
	endif()
endif()
set(KVT_PYTHON_INSTALL_DIR ${_kvt_pydir} CACHE INTERNAL "the Python package directory cmake --install uses")
install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/python/kvtier DESTINATION ${_kvt_pydir}
	COMPONENT python FILES_MATCHING PATTERN "*.py" PATTERN "__pycache__" EXCLUDE)
