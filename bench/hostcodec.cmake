# kvtier-hostcodec-bench: the compressed host tier (host.codec) against the raw one and memcpy
# in the same run, on a .kvd dump's blocks.
if(TARGET kvtier AND TARGET kvtierd)
	add_executable(kvtier-hostcodec-bench ${CMAKE_CURRENT_SOURCE_DIR}/hostcodec_bench.c)
	target_link_libraries(kvtier-hostcodec-bench PRIVATE kvtier kvt_kvd)
	target_compile_definitions(kvtier-hostcodec-bench PRIVATE _GNU_SOURCE)
endif()
