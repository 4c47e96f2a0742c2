# The GPU tier through a real kvtierd: gpu_tier_nogpu runs anywhere (config keys, the daemon
# without a GPU, -ENODEV); gpu_tier needs a GPU and exits 77 (skipped) without one.
if(TARGET kvtier AND TARGET kvt_gpu AND TARGET kvtierd)
	add_executable(gpu_tier_test ${PROJECT_SOURCE_DIR}/tests/integration/gpu_tier_test.c
		${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
	target_link_libraries(gpu_tier_test PRIVATE kvtier kvt_proto kvt_gpu m)
	target_compile_definitions(gpu_tier_test PRIVATE _GNU_SOURCE)
	kvt_add_test(gpu_tier_nogpu
		COMMAND $<TARGET_FILE:gpu_tier_test> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl> nogpu
		LABELS fast TIMEOUT 120)
	kvt_add_test(gpu_tier
		COMMAND $<TARGET_FILE:gpu_tier_test> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl> gpu
		LABELS gpu TIMEOUT 300)
endif()

# The device API over the compressed host tier (host.codec = bq): records decoded on the GPU
# into the pages, encoded there by kvt_dev_put; compared with the CPU codec bit for bit.
if(TARGET kvtier AND TARGET kvt_gpu AND TARGET kvtierd)
	add_executable(gpu_hostcodec_test ${PROJECT_SOURCE_DIR}/tests/integration/gpu_hostcodec_test.c
		${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
	target_link_libraries(gpu_hostcodec_test PRIVATE kvtier kvt_proto kvt_gpu kvt_codecs m)
	target_compile_definitions(gpu_hostcodec_test PRIVATE _GNU_SOURCE)
	kvt_add_test(gpu_hostcodec
		COMMAND $<TARGET_FILE:gpu_hostcodec_test> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
		LABELS gpu TIMEOUT 300)
endif()

# Token-major engine pages (kvt_dev_pages.page_heads): stored in the layout's order, through
# the raw host tier, the compressed host tier and the GPU pool; compared with a transposition
# done on the CPU.
if(TARGET kvtier AND TARGET kvt_gpu AND TARGET kvtierd)
	add_executable(gpu_pageorder_test ${PROJECT_SOURCE_DIR}/tests/integration/gpu_pageorder_test.c
		${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
	target_link_libraries(gpu_pageorder_test PRIVATE kvtier kvt_proto kvt_gpu kvt_codecs m)
	target_compile_definitions(gpu_pageorder_test PRIVATE _GNU_SOURCE)
	kvt_add_test(gpu_pageorder
		COMMAND $<TARGET_FILE:gpu_pageorder_test> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
		LABELS gpu TIMEOUT 300)
endif()

# The device API's own logic without a GPU: the client's device files compiled into the tests
# above with gpu/emu/gpu_host_emu.c in place of gpu/ (host memory, work done as it is queued
# or, in the *_async variants, later and interleaved between streams; the CPU codec for bq;
# no GPU tier), through a real kvtierd.  Checks which blocks go where,
# slots, batch arrays and byte order, not the kernels (gpu/emu/run_emu.sh) nor CUDA.
if(TARGET kvtier AND TARGET kvt_gpu AND TARGET kvtierd)
	set(_kvt_emu_src ${PROJECT_SOURCE_DIR}/tests/integration/harness.c
		${PROJECT_SOURCE_DIR}/client/kvtier.c ${PROJECT_SOURCE_DIR}/client/kvtier_conn.c
		${PROJECT_SOURCE_DIR}/client/kvtier_batch.c ${PROJECT_SOURCE_DIR}/client/kvtier_gpu.c
		${PROJECT_SOURCE_DIR}/client/kvtier_gpu_copy.c
		${PROJECT_SOURCE_DIR}/client/kvtier_gpu_codec.c ${PROJECT_SOURCE_DIR}/gpu/gpu_host.c
		${PROJECT_SOURCE_DIR}/gpu/gpu_ref.c ${PROJECT_SOURCE_DIR}/gpu/emu/gpu_host_emu.c)
	foreach(_t pageorder hostcodec)
		add_executable(gpu_${_t}_emu ${PROJECT_SOURCE_DIR}/tests/integration/gpu_${_t}_test.c
			${_kvt_emu_src})
		target_include_directories(gpu_${_t}_emu PRIVATE ${PROJECT_SOURCE_DIR}/client
			${PROJECT_SOURCE_DIR}/proto ${PROJECT_SOURCE_DIR}/gpu ${PROJECT_SOURCE_DIR}/codecs)
		target_compile_definitions(gpu_${_t}_emu PRIVATE KVT_GPU_EMU=1 _GNU_SOURCE
			KVT_BUILDING_LIB)
		target_link_libraries(gpu_${_t}_emu PRIVATE kvt_proto kvt_codecs Threads::Threads m)
		kvt_add_test(gpu_${_t}_emu
			COMMAND $<TARGET_FILE:gpu_${_t}_emu> $<TARGET_FILE:kvtierd> $<TARGET_FILE:kvtierctl>
			LABELS fast TIMEOUT 300)
		# The same with the queued work run later, on a thread of its own, streams
		# interleaved as the seeds pick (gpu/emu/gpu_host_emu.c, KVT_EMU_ASYNC): checks the
		# events and waits between the caller's stream and the codec stream.
		foreach(_seed 1 2)
			kvt_add_test(gpu_${_t}_emu_async${_seed}
				COMMAND $<TARGET_FILE:gpu_${_t}_emu> $<TARGET_FILE:kvtierd>
					$<TARGET_FILE:kvtierctl>
				ENVIRONMENT KVT_EMU_ASYNC=${_seed} LABELS fast TIMEOUT 300)
		endforeach()
	endforeach()
endif()
