# bq-basis-speed: the speed model of a block-basis bq decoder (codecs/CODECS.md "bq"), built
# so that it keeps compiling; not installed.
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64")
	add_executable(bq-basis-speed ${CMAKE_CURRENT_SOURCE_DIR}/bq_basis_speed.c)
endif()
