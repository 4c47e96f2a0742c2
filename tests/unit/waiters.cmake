# The readiness list between placement and the ring operations (daemon/waiters.c), without
# a daemon.
if(CMOCKA_FOUND)
	add_executable(test_waiters ${PROJECT_SOURCE_DIR}/tests/unit/test_waiters.c)
	target_link_libraries(test_waiters PRIVATE kvtd_core PkgConfig::CMOCKA)
	kvt_add_test(unit_waiters COMMAND $<TARGET_FILE:test_waiters> LABELS fast unit)
endif()
