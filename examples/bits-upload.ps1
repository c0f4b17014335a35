<#
.SYNOPSIS
    Upload a file to a bits-wsgi server with BITS, resume it if it was interrupted, and save the
    reply of an upload-reply directory.

.DESCRIPTION
    Windows PowerShell 5.1 or PowerShell 7 on Windows (the BitsTransfer module and bitsadmin.exe
    ship with Windows). NOT RUNNABLE on the project's Linux test machines, so untested there:
    read it before you rely on it (docs/windows.md).

.EXAMPLE
    .\bits-upload.ps1 -Source C:\dumps\app.dmp -Destination https://bits.example.org/dumps/app.dmp

.EXAMPLE
    .\bits-upload.ps1 -Source C:\logs\x.log -Destination https://bits.example.org/reply/x.log `
        -ReplyTo C:\logs\x.reply -Credential (Get-Credential)
#>
param(
    [Parameter(Mandatory)] [string] $Source,
    [Parameter(Mandatory)] [string] $Destination,
    [string] $ReplyTo,
    [pscredential] $Credential
)
$ErrorActionPreference = 'Stop'
Import-Module BitsTransfer
$name = 'bits-wsgi ' + $Destination

if ($ReplyTo) {
    # Upload-reply jobs: PowerShell's cmdlets cannot name the reply file, bitsadmin can.
    $existing = Get-BitsTransfer -Name $name -ErrorAction SilentlyContinue | Select-Object -First 1
    if (-not $existing) {
        $id = (bitsadmin /rawreturn /create /upload-reply $name).Trim()
        bitsadmin /rawreturn /addfile $id $Destination $Source | Out-Null
        bitsadmin /rawreturn /setreplyfilename $id $ReplyTo | Out-Null
        if ($Credential) {
            $password = $Credential.GetNetworkCredential().Password
            bitsadmin /rawreturn /setcredentials $id SERVER BASIC $Credential.UserName $password |
                Out-Null
        }
    } else {
        $id = '{' + $existing.JobId + '}'
        Write-Host "resuming $name at $($existing.BytesTransferred) of $($existing.BytesTotal) bytes"
    }
    bitsadmin /rawreturn /resume $id | Out-Null
    do {
        Start-Sleep -Seconds 2
        $state = (bitsadmin /rawreturn /getstate $id).Trim()
        Write-Host "$state $((bitsadmin /rawreturn /getbytestransferred $id).Trim()) bytes"
    } while ($state -in 'QUEUED', 'CONNECTING', 'TRANSFERRING', 'TRANSIENT_ERROR')
    if ($state -ne 'TRANSFERRED') {
        bitsadmin /geterror $id
        throw "upload failed ($state)"
    }
    bitsadmin /rawreturn /complete $id | Out-Null
    Write-Host "reply saved to $ReplyTo"
    return
}

$job = Get-BitsTransfer -Name $name -ErrorAction SilentlyContinue | Select-Object -First 1
if ($job) {
    Write-Host "resuming $name at $($job.BytesTransferred) of $($job.BytesTotal) bytes"
    Resume-BitsTransfer -BitsJob $job -Asynchronous | Out-Null
} else {
    $options = @{
        Source       = $Source
        Destination  = $Destination
        DisplayName  = $name
        TransferType = 'Upload'
        Asynchronous = $true
    }
    if ($Credential) {
        $options.Credential = $Credential
        $options.Authentication = 'Basic'
    }
    $job = Start-BitsTransfer @options
}
while ($job.JobState -in 'Queued', 'Connecting', 'Transferring', 'TransientError') {
    Start-Sleep -Seconds 2
    Write-Host ('{0}: {1} of {2} bytes' -f $job.JobState, $job.BytesTransferred, $job.BytesTotal)
}
if ($job.JobState -ne 'Transferred') {
    $job | Format-List JobState, ErrorContext, ErrorCondition, ErrorDescription
    throw "upload failed: $($job.ErrorDescription)"
}
Complete-BitsTransfer -BitsJob $job
Write-Host "uploaded $Source to $Destination"
