# kvtier-stall-bench: lookup latency of one client while another's blocks are demoted
# through a compressing NVMe chain, codec on the event loop vs on codec threads.
if(TARGET kvtier)
	add_executable(kvtier-stall-bench ${CMAKE_CURRENT_SOURCE_DIR}/kvtier_stall.c)
	target_include_directories(kvtier-stall-bench PRIVATE ${PROJECT_SOURCE_DIR}/client)
	target_link_libraries(kvtier-stall-bench PRIVATE kvtier Threads::Threads)
endif()
