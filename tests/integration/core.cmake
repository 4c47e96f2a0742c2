# Integration tests of the foundation: a real kvtierd driven through libkvtier, raw
# sockets, hand-mapped rings and kvtierctl.
add_executable(test_daemon ${PROJECT_SOURCE_DIR}/tests/integration/test_daemon.c
	${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
target_link_libraries(test_daemon PRIVATE kvtier kvt_proto kvt_codecs kvt_kvd)
target_compile_definitions(test_daemon PRIVATE _GNU_SOURCE)
kvt_add_test(integration_daemon
	COMMAND $<TARGET_FILE:test_daemon> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
	LABELS fast reliability TIMEOUT 600)

# libkvtier's client side against a real kvtierd: handles and lookups across a daemon killed
# with SIGKILL and restarted, and the batched calls.
add_executable(test_client ${PROJECT_SOURCE_DIR}/tests/integration/test_client.c
	${PROJECT_SOURCE_DIR}/tests/integration/harness.c
	${PROJECT_SOURCE_DIR}/tests/integration/header_sketch.c)
target_link_libraries(test_client PRIVATE kvtier)
target_compile_definitions(test_client PRIVATE _GNU_SOURCE)
kvt_add_test(integration_client
	COMMAND $<TARGET_FILE:test_client> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
	LABELS fast reliability TIMEOUT 300)

# Operating kvtierd: in the background (no -f), SIGHUP, logs, its socket directory, and
# kvtierctl's reports.
add_executable(test_ops ${PROJECT_SOURCE_DIR}/tests/integration/test_ops.c
	${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
target_link_libraries(test_ops PRIVATE kvtier)
target_compile_definitions(test_ops PRIVATE _GNU_SOURCE)
kvt_add_test(integration_ops
	COMMAND $<TARGET_FILE:test_ops> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
	LABELS fast reliability TIMEOUT 300)

# `cmake --install --prefix P` as a user would, and programs built against P.
kvt_add_test(install_prefix
	COMMAND sh ${PROJECT_SOURCE_DIR}/tests/integration/install_check.sh ${PROJECT_BINARY_DIR}
		${CMAKE_C_COMPILER} ${CMAKE_INSTALL_FULL_SYSCONFDIR}
	LABELS fast TIMEOUT 300)

# What one tenant can do to the others (issue 11): full index, admission, quotas, pinned
# arenas, layouts, admin commands' cost, client deaths, EMFILE.
add_executable(test_tenants ${PROJECT_SOURCE_DIR}/tests/integration/test_tenants.c
	${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
target_link_libraries(test_tenants PRIVATE kvtier kvt_proto)
target_compile_definitions(test_tenants PRIVATE _GNU_SOURCE)
kvt_add_test(integration_tenants
	COMMAND $<TARGET_FILE:test_tenants> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
	LABELS fast reliability TIMEOUT 600)
