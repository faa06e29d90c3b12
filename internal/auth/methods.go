package auth

import (
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	pb "github.com/stowage-io/stowage/api/stowage/v1"
)

// Rule is what a call needs: an action on resources.
type Rule struct {
	Action string
	// Resources returns the names of the object the request is about (its
	// id, name or ARN as the request gives it), or "*" for a list call or
	// a call that names no object.
	Resources func(req any) []string
	// Each: the resources are several objects, each to be allowed (not
	// several names of one object, any of which may match).
	Each bool
	// AnyCaller: every authenticated caller may (no policy is asked);
	// for calls that tell nothing about any object.
	AnyCaller bool
}

// The gRPC health service: the drivers' readiness asks it with their own
// tokens, so an answer proves the server answers and the token is good.
func init() {
	Methods[healthpb.Health_Check_FullMethodName] = Rule{Action: "health:Check", Resources: all, AnyCaller: true}
	Methods[healthpb.Health_List_FullMethodName] = Rule{Action: "health:List", Resources: all, AnyCaller: true}
	Methods[healthpb.Health_Watch_FullMethodName] = Rule{Action: "health:Watch", Resources: all, AnyCaller: true}
}

func res[T any](f func(T) string) func(any) []string {
	return func(req any) []string {
		if t, ok := req.(T); ok {
			if r := f(t); r != "" {
				return []string{r}
			}
		}
		return []string{"*"}
	}
}

func many[T any](f func(T) []string) func(any) []string {
	return func(req any) []string {
		if t, ok := req.(T); ok {
			if r := f(t); len(r) > 0 {
				return r
			}
		}
		return []string{"*"}
	}
}

func all(any) []string { return []string{"*"} }

// Methods maps every method of the Stowage API to the action it is and the
// object it acts on. A method missing here is refused (the interceptor
// fails closed); TestMethods_EveryRegisteredMethodHasARule keeps it whole.
var Methods = map[string]Rule{
	pb.VolumeService_CreateVolume_FullMethodName:        {Action: "volume:CreateVolume", Resources: res(func(r *pb.CreateVolumeRequest) string { return r.Name })},
	pb.VolumeService_DescribeVolume_FullMethodName:      {Action: "volume:DescribeVolume", Resources: res(func(r *pb.DescribeVolumeRequest) string { return r.VolumeId })},
	pb.VolumeService_ListVolumes_FullMethodName:         {Action: "volume:ListVolumes", Resources: all},
	pb.VolumeService_DeleteVolume_FullMethodName:        {Action: "volume:DeleteVolume", Resources: res(func(r *pb.DeleteVolumeRequest) string { return r.VolumeId })},
	pb.VolumeService_AttachVolume_FullMethodName:        {Action: "volume:AttachVolume", Resources: res(func(r *pb.AttachVolumeRequest) string { return r.VolumeId })},
	pb.VolumeService_DetachVolume_FullMethodName:        {Action: "volume:DetachVolume", Resources: res(func(r *pb.DetachVolumeRequest) string { return r.VolumeId })},
	pb.VolumeService_ResizeVolume_FullMethodName:        {Action: "volume:ResizeVolume", Resources: res(func(r *pb.ResizeVolumeRequest) string { return r.VolumeId })},
	pb.VolumeService_ModifyVolume_FullMethodName:        {Action: "volume:ModifyVolume", Resources: res(func(r *pb.ModifyVolumeRequest) string { return r.VolumeId })},
	pb.VolumeService_GetVolumeDataKey_FullMethodName:    {Action: "kms:GetVolumeDataKey", Resources: res(func(r *pb.GetVolumeDataKeyRequest) string { return r.VolumeId })},
	pb.VolumeService_GetAttachmentSecret_FullMethodName: {Action: "volume:GetAttachmentSecret", Resources: res(func(r *pb.GetAttachmentSecretRequest) string { return r.VolumeId })},

	pb.SnapshotService_CreateSnapshot_FullMethodName:   {Action: "snapshot:CreateSnapshot", Resources: res(func(r *pb.CreateSnapshotRequest) string { return r.VolumeId })},
	pb.SnapshotService_DescribeSnapshot_FullMethodName: {Action: "snapshot:DescribeSnapshot", Resources: res(func(r *pb.DescribeSnapshotRequest) string { return r.SnapshotId })},
	pb.SnapshotService_ListSnapshots_FullMethodName:    {Action: "snapshot:ListSnapshots", Resources: all},
	pb.SnapshotService_DeleteSnapshot_FullMethodName:   {Action: "snapshot:DeleteSnapshot", Resources: res(func(r *pb.DeleteSnapshotRequest) string { return r.SnapshotId })},

	pb.PoolService_ListPools_FullMethodName: {Action: "pool:ListPools", Resources: all},
	pb.PoolService_RegisterStorageHost_FullMethodName: {Action: "pool:RegisterStorageHost",
		Resources: res(func(r *pb.RegisterStorageHostRequest) string { return r.Pool })},
	pb.PoolService_GetStorageHostAgentToken_FullMethodName: {Action: "pool:GetStorageHostAgentToken",
		Resources: res(func(r *pb.GetStorageHostAgentTokenRequest) string { return r.Pool })},
	pb.PoolService_DeregisterStorageHost_FullMethodName: {Action: "pool:DeregisterStorageHost",
		Resources: res(func(r *pb.DeregisterStorageHostRequest) string { return r.Pool })},

	pb.NodeService_RegisterNode_FullMethodName: {Action: "node:RegisterNode", Resources: res(func(r *pb.RegisterNodeRequest) string { return r.Id })},
	pb.NodeService_ListNodes_FullMethodName:    {Action: "node:ListNodes", Resources: all},

	pb.KeyService_CreateKey_FullMethodName:           {Action: "kms:CreateKey", Resources: all},
	pb.KeyService_DescribeKey_FullMethodName:         {Action: "kms:DescribeKey", Resources: res(func(r *pb.DescribeKeyRequest) string { return r.KeyId })},
	pb.KeyService_ListKeys_FullMethodName:            {Action: "kms:ListKeys", Resources: all},
	pb.KeyService_EnableKey_FullMethodName:           {Action: "kms:EnableKey", Resources: res(func(r *pb.KeyRequest) string { return r.KeyId })},
	pb.KeyService_DisableKey_FullMethodName:          {Action: "kms:DisableKey", Resources: res(func(r *pb.KeyRequest) string { return r.KeyId })},
	pb.KeyService_ScheduleKeyDeletion_FullMethodName: {Action: "kms:ScheduleKeyDeletion", Resources: res(func(r *pb.ScheduleKeyDeletionRequest) string { return r.KeyId })},
	pb.KeyService_CancelKeyDeletion_FullMethodName:   {Action: "kms:CancelKeyDeletion", Resources: res(func(r *pb.KeyRequest) string { return r.KeyId })},
	pb.KeyService_RotateKey_FullMethodName:           {Action: "kms:RotateKey", Resources: res(func(r *pb.KeyRequest) string { return r.KeyId })},
	pb.KeyService_CreateAlias_FullMethodName:         {Action: "kms:CreateAlias", Resources: res(func(r *pb.CreateAliasRequest) string { return r.TargetKeyId })},
	pb.KeyService_DeleteAlias_FullMethodName:         {Action: "kms:DeleteAlias", Resources: res(func(r *pb.DeleteAliasRequest) string { return r.AliasName })},
	pb.KeyService_Encrypt_FullMethodName:             {Action: "kms:Encrypt", Resources: res(func(r *pb.EncryptRequest) string { return r.KeyId })},
	// The ciphertext names its key; the request does not.
	pb.KeyService_Decrypt_FullMethodName:         {Action: "kms:Decrypt", Resources: all},
	pb.KeyService_GenerateDataKey_FullMethodName: {Action: "kms:GenerateDataKey", Resources: res(func(r *pb.GenerateDataKeyRequest) string { return r.KeyId })},

	pb.SecretService_CreateSecret_FullMethodName:             {Action: "secretsmanager:CreateSecret", Resources: res(func(r *pb.CreateSecretRequest) string { return r.Name })},
	pb.SecretService_PutSecretValue_FullMethodName:           {Action: "secretsmanager:PutSecretValue", Resources: res(func(r *pb.PutSecretValueRequest) string { return r.SecretId })},
	pb.SecretService_GetSecretValue_FullMethodName:           {Action: "secretsmanager:GetSecretValue", Resources: res(func(r *pb.GetSecretValueRequest) string { return r.SecretId })},
	pb.SecretService_DescribeSecret_FullMethodName:           {Action: "secretsmanager:DescribeSecret", Resources: res(func(r *pb.DescribeSecretRequest) string { return r.SecretId })},
	pb.SecretService_ListSecrets_FullMethodName:              {Action: "secretsmanager:ListSecrets", Resources: all},
	pb.SecretService_DeleteSecret_FullMethodName:             {Action: "secretsmanager:DeleteSecret", Resources: res(func(r *pb.DeleteSecretRequest) string { return r.SecretId })},
	pb.SecretService_RestoreSecret_FullMethodName:            {Action: "secretsmanager:RestoreSecret", Resources: res(func(r *pb.RestoreSecretRequest) string { return r.SecretId })},
	pb.SecretService_RotateSecret_FullMethodName:             {Action: "secretsmanager:RotateSecret", Resources: res(func(r *pb.RotateSecretRequest) string { return r.SecretId })},
	pb.SecretService_CancelRotateSecret_FullMethodName:       {Action: "secretsmanager:CancelRotateSecret", Resources: res(func(r *pb.CancelRotateSecretRequest) string { return r.SecretId })},
	pb.SecretService_UpdateSecretVersionStage_FullMethodName: {Action: "secretsmanager:UpdateSecretVersionStage", Resources: res(func(r *pb.UpdateSecretVersionStageRequest) string { return r.SecretId })},
	pb.SecretService_TagSecret_FullMethodName:                {Action: "secretsmanager:TagResource", Resources: res(func(r *pb.TagSecretRequest) string { return r.SecretId })},
	// Each object of the batch is authorised again by the handler, with
	// secretsmanager:GetSecretValue or ssm:GetParameter for the pod.
	pb.SecretService_BatchGetValues_FullMethodName: {Action: "secretsmanager:BatchGetValues", Resources: all},

	pb.ParameterService_PutParameter_FullMethodName:          {Action: "ssm:PutParameter", Resources: res(func(r *pb.PutParameterRequest) string { return r.Name })},
	pb.ParameterService_GetParameter_FullMethodName:          {Action: "ssm:GetParameter", Resources: res(func(r *pb.GetParameterRequest) string { return r.Name })},
	pb.ParameterService_GetParameters_FullMethodName:         {Action: "ssm:GetParameters", Resources: many(func(r *pb.GetParametersRequest) []string { return r.Names }), Each: true},
	pb.ParameterService_GetParametersByPath_FullMethodName:   {Action: "ssm:GetParametersByPath", Resources: res(func(r *pb.GetParametersByPathRequest) string { return r.Path })},
	pb.ParameterService_DeleteParameter_FullMethodName:       {Action: "ssm:DeleteParameter", Resources: res(func(r *pb.DeleteParameterRequest) string { return r.Name })},
	pb.ParameterService_LabelParameterVersion_FullMethodName: {Action: "ssm:LabelParameterVersion", Resources: res(func(r *pb.LabelParameterVersionRequest) string { return r.Name })},
	pb.ParameterService_GetParameterHistory_FullMethodName:   {Action: "ssm:GetParameterHistory", Resources: res(func(r *pb.GetParameterHistoryRequest) string { return r.Name })},

	pb.FileSystemService_CreateFileSystem_FullMethodName:   {Action: "filesystem:CreateFileSystem", Resources: res(func(r *pb.CreateFileSystemRequest) string { return r.Name })},
	pb.FileSystemService_DescribeFileSystem_FullMethodName: {Action: "filesystem:DescribeFileSystem", Resources: res(func(r *pb.DescribeFileSystemRequest) string { return r.FileSystemId })},
	pb.FileSystemService_ListFileSystems_FullMethodName:    {Action: "filesystem:ListFileSystems", Resources: all},
	pb.FileSystemService_DeleteFileSystem_FullMethodName:   {Action: "filesystem:DeleteFileSystem", Resources: res(func(r *pb.DeleteFileSystemRequest) string { return r.FileSystemId })},

	pb.AccessPointService_CreateAccessPoint_FullMethodName:   {Action: "filesystem:CreateAccessPoint", Resources: res(func(r *pb.CreateAccessPointRequest) string { return r.FileSystemId })},
	pb.AccessPointService_DescribeAccessPoint_FullMethodName: {Action: "filesystem:DescribeAccessPoint", Resources: res(func(r *pb.DescribeAccessPointRequest) string { return r.AccessPointId })},
	pb.AccessPointService_ListAccessPoints_FullMethodName:    {Action: "filesystem:ListAccessPoints", Resources: res(func(r *pb.ListAccessPointsRequest) string { return r.FileSystemId })},
	pb.AccessPointService_DeleteAccessPoint_FullMethodName:   {Action: "filesystem:DeleteAccessPoint", Resources: res(func(r *pb.DeleteAccessPointRequest) string { return r.AccessPointId })},
	pb.AccessPointService_SetAccessPointQuota_FullMethodName: {Action: "filesystem:SetAccessPointQuota", Resources: res(func(r *pb.SetAccessPointQuotaRequest) string { return r.AccessPointId })},

	pb.PolicyService_CreatePolicy_FullMethodName: {Action: "auth:CreatePolicy", Resources: res(func(r *pb.CreatePolicyRequest) string { return r.Name })},
	pb.PolicyService_GetPolicy_FullMethodName:    {Action: "auth:GetPolicy", Resources: res(func(r *pb.GetPolicyRequest) string { return r.Name })},
	pb.PolicyService_ListPolicies_FullMethodName: {Action: "auth:ListPolicies", Resources: all},
	pb.PolicyService_DeletePolicy_FullMethodName: {Action: "auth:DeletePolicy", Resources: res(func(r *pb.DeletePolicyRequest) string { return r.Name })},
	pb.PolicyService_AttachPolicy_FullMethodName: {Action: "auth:AttachPolicy", Resources: res(func(r *pb.AttachPolicyRequest) string { return r.Name })},
	pb.PolicyService_DetachPolicy_FullMethodName: {Action: "auth:DetachPolicy", Resources: res(func(r *pb.DetachPolicyRequest) string { return r.Name })},
	pb.PolicyService_CreateToken_FullMethodName:  {Action: "auth:CreateToken", Resources: res(func(r *pb.CreateTokenRequest) string { return r.Principal })},
	pb.PolicyService_ListTokens_FullMethodName:   {Action: "auth:ListTokens", Resources: all},
	pb.PolicyService_RevokeToken_FullMethodName:  {Action: "auth:RevokeToken", Resources: res(func(r *pb.RevokeTokenRequest) string { return r.Id })},
}
