# kvtier-llama-bench: TTFT with a prefix restored from kvtier's NVMe tier vs recomputing it
# vs llama.cpp's own state files (README "llama.cpp").  Built with the llama.cpp integration.
if(KVT_HAVE_LLAMA)
	# kvtierd is started and stopped as the tests do (tests/integration/harness.c).
	add_executable(kvtier-llama-bench ${CMAKE_CURRENT_SOURCE_DIR}/llama_bench.c
		${PROJECT_SOURCE_DIR}/tests/integration/harness.c)
	target_link_libraries(kvtier-llama-bench PRIVATE kvtier_llama kvtier)
	target_include_directories(kvtier-llama-bench PRIVATE ${PROJECT_SOURCE_DIR}/tests/integration)
	target_compile_definitions(kvtier-llama-bench PRIVATE _GNU_SOURCE)
endif()
