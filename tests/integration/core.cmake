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


# The model-based crash test: clients on threads against a kvtierd SIGKILLed and restarted
# at seeded random points, every answer checked against a model of what may be served.
# CI runs 10 000 operations across 50 restarts (about 20 s; 60 s under ASan);
# KVT_TEST_OPS / KVT_TEST_RESTARTS scale it (see the file).
add_executable(test_crash_model ${PROJECT_SOURCE_DIR}/tests/integration/test_crash_model.c
	${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
target_link_libraries(test_crash_model PRIVATE kvtier Threads::Threads)
target_compile_definitions(test_crash_model PRIVATE _GNU_SOURCE)
kvt_add_test(integration_crash_model
	COMMAND $<TARGET_FILE:test_crash_model> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
	LABELS reliability TIMEOUT 300 ENVIRONMENT "KVT_TEST_OPS=10000;KVT_TEST_RESTARTS=50")

# The NVMe tier's durability and recovery (deletes across kill -9, slot-file safety, serving
# while recovering).
add_executable(test_nvme_recovery ${PROJECT_SOURCE_DIR}/tests/integration/test_nvme_recovery.c
	${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
target_link_libraries(test_nvme_recovery PRIVATE kvtier)
target_compile_definitions(test_nvme_recovery PRIVATE _GNU_SOURCE)
kvt_add_test(integration_nvme_recovery
	COMMAND $<TARGET_FILE:test_nvme_recovery> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
	LABELS fast reliability TIMEOUT 600)

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

# The compressed host tier (host.codec = bq): clients encode puts and decode gets, leases
# hold records, raw and encoded blocks side by side, through NVMe and a restart.
add_executable(test_hostcodec ${PROJECT_SOURCE_DIR}/tests/integration/test_hostcodec.c
	${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
target_link_libraries(test_hostcodec PRIVATE kvtier kvt_codecs m)
target_compile_definitions(test_hostcodec PRIVATE _GNU_SOURCE)
kvt_add_test(integration_hostcodec
	COMMAND $<TARGET_FILE:test_hostcodec> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
	LABELS fast TIMEOUT 300)

# codec = auto: kvtierctl calibrate on held blocks, the choice within its err budget after a
# round trip through NVMe (real queries of tests/data), restart, damaged calibration files.
add_executable(test_codec_auto ${PROJECT_SOURCE_DIR}/tests/integration/test_codec_auto.c
	${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
target_link_libraries(test_codec_auto PRIVATE kvtier kvt_codecs kvt_kvd m)
target_compile_definitions(test_codec_auto PRIVATE _GNU_SOURCE)
kvt_add_test(integration_codec_auto
	COMMAND $<TARGET_FILE:test_codec_auto> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
	LABELS fast TIMEOUT 600)
