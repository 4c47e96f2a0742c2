# Integration tests of the foundation: a real kvtierd driven through libkvtier, raw
# sockets, hand-mapped rings and kvtierctl.
add_executable(test_daemon ${PROJECT_SOURCE_DIR}/tests/integration/test_daemon.c
	${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
target_link_libraries(test_daemon PRIVATE kvtier kvt_proto kvt_codecs kvt_kvd)
target_compile_definitions(test_daemon PRIVATE _GNU_SOURCE)
kvt_add_test(integration_daemon
	COMMAND $<TARGET_FILE:test_daemon> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
	LABELS fast reliability TIMEOUT 600)

# What one tenant can do to the others (issue 11): full index, admission, quotas, pinned
# arenas, layouts, admin commands' cost, client deaths, EMFILE.
add_executable(test_tenants ${PROJECT_SOURCE_DIR}/tests/integration/test_tenants.c
	${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
target_link_libraries(test_tenants PRIVATE kvtier kvt_proto)
target_compile_definitions(test_tenants PRIVATE _GNU_SOURCE)
kvt_add_test(integration_tenants
	COMMAND $<TARGET_FILE:test_tenants> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
	LABELS fast reliability TIMEOUT 600)
