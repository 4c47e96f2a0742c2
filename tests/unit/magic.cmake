# Object checks (proto/kvt_check.h): stray handles given to the client API, the device API
# and codec chains abort with a message where the checks are built in (Debug, KVT_DEBUG, the
# sanitizer build), and are answered with -EINVAL where they are not.
if(CMOCKA_FOUND)
	add_executable(test_magic ${PROJECT_SOURCE_DIR}/tests/unit/test_magic.c)
	target_link_libraries(test_magic PRIVATE kvtier kvt_codecs PkgConfig::CMOCKA)
	target_compile_definitions(test_magic PRIVATE _GNU_SOURCE)
	kvt_add_test(unit_magic COMMAND $<TARGET_FILE:test_magic> LABELS fast)
endif()
